//! Applies `migrations/` to the database named by `DATABASE_URL`, or read
//! from SSM under `SSM_PARAMETER_PREFIX` (how a deployment gets its schema).

use support_chat::config::{Config, Env};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    support_chat::telemetry::init();
    let mut env = Env::from_process();
    // The migrator needs only the database; don't fail on unrelated settings.
    env.remove("REDIS_URL");
    let config = match Config::load_from(env).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("migrate: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match support_chat::store::migrate(&config.database).await {
        Ok(applied) if applied.is_empty() => {
            println!("migrate: the schema is up to date");
            std::process::ExitCode::SUCCESS
        }
        Ok(applied) => {
            for m in applied {
                println!("migrate: applied {m}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("migrate: failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
