//! The deployment packages: each binary as `bootstrap`, zipped.

use std::path::Path;
use std::process::Command;

use crate::report::{Report, Target};
use crate::settings::Settings;
use crate::{HISTORY, Res, SEND};

pub fn run(s: &Settings, r: &mut Report) -> Res<()> {
    r.section(&format!(
        "Package size ({} release build here; deployed builds are arm64)",
        std::env::consts::ARCH
    ));
    for name in [SEND, HISTORY] {
        let bin = s.bin_dir.join(name);
        let raw = std::fs::metadata(&bin)?.len();
        let (zipped, tool) = zip_size(&bin, &s.work_dir.join(format!("zip-{name}")))?;
        let key = name.replace('-', "_");
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        r.count(
            &format!("size.{key}.bootstrap_mib"),
            &format!("{name}: bootstrap (MiB)"),
            mib(raw),
            &format!("{raw} bytes"),
            vec![],
        );
        r.count(
            &format!("size.{key}.zip_mib"),
            &format!("{name}: bootstrap.zip (MiB)"),
            mib(zipped),
            &format!("{zipped} bytes, {tool}"),
            vec![Target::at_most(mib(zipped), 6.0, "<= 6 MiB")],
        );
    }
    Ok(())
}

/// Zips `bin` as `bootstrap` (what a `provided.al2023` package holds).
fn zip_size(bin: &Path, dir: &Path) -> Res<(u64, &'static str)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    std::fs::copy(bin, dir.join("bootstrap"))?;
    let zip = dir.join("bootstrap.zip");
    let ran = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .current_dir(dir)
            .status()
            .is_ok_and(|s| s.success())
    };
    let tool = if ran("zip", &["-q", "-X", "bootstrap.zip", "bootstrap"]) {
        "zip (deflate, default level)"
    } else if ran(
        "python3",
        &["-m", "zipfile", "-c", "bootstrap.zip", "bootstrap"],
    ) {
        "python3 -m zipfile (deflate)"
    } else {
        return Err("neither `zip` nor `python3 -m zipfile` could zip the bootstrap".into());
    };
    let size = std::fs::metadata(&zip)?.len();
    let _ = std::fs::remove_file(dir.join("bootstrap"));
    Ok((size, tool))
}
