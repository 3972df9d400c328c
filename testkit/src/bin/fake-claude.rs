//! `fake-claude --port P [--first-token-ms N] [--gap-ms N] [--reply TEXT] [--chunks N]`:
//! the fake Messages API for scripts and browser tests. Flags and the
//! markers it honours are described in the `testkit` crate documentation.

use std::time::Duration;
use testkit::claude::{FakeClaude, REPLY, Scenario, markers};

struct Args {
    port: u16,
    first_token_ms: u64,
    gap_ms: u64,
    reply: String,
    chunks: usize,
}

const USAGE: &str =
    "usage: fake-claude --port P [--first-token-ms N] [--gap-ms N] [--reply TEXT] [--chunks N]";

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut out = Args {
        port: 0,
        first_token_ms: 150,
        gap_ms: 40,
        reply: REPLY.to_owned(),
        chunks: 8,
    };
    let mut port = None;
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {value}"))
        };
        match flag.as_str() {
            "--port" => {
                port = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--port: not a port: {value}"))?,
                )
            }
            "--first-token-ms" => out.first_token_ms = number()?,
            "--gap-ms" => out.gap_ms = number()?,
            "--chunks" => out.chunks = number()? as usize,
            "--reply" => out.reply = value,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    out.port = port.ok_or("--port is required")?;
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse(std::env::args().skip(1)).unwrap_or_else(|e| {
        eprintln!("fake-claude: {e}\n{USAGE}");
        std::process::exit(2);
    });
    let base = Scenario::text(args.reply)
        .chunks(args.chunks)
        .first_token(Duration::from_millis(args.first_token_ms))
        .gap(Duration::from_millis(args.gap_ms));
    let route_base = base.clone();
    let claude = FakeClaude::builder()
        .default_scenario(base)
        .keep(0)
        .port(args.port)
        .route(move |request| markers::scenario_for(&route_base, request))
        .start()
        .await
        .unwrap_or_else(|e| {
            eprintln!("fake-claude: cannot listen on 127.0.0.1:{}: {e}", args.port);
            std::process::exit(1);
        });
    println!("listening on {}", claude.addr());
    // Serve until killed; SIGTERM or Ctrl-C end the process.
    let _ = tokio::signal::ctrl_c().await;
}
