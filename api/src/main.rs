//! The `parley` binary: `serve` (the default), `migrate`, `print-schema`.
use clap::{Parser, Subcommand};
use parley::{app::Application, db::Db, settings::Settings, telemetry};

// glibc's malloc showed as 6 % of a request's CPU (malloc, free, consolidation). jemalloc is
// about as fast as mimalloc here and holds less per idle subscription (31.7 KB against 36.9
// with glibc and 41.9 with mimalloc; see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "parley",
    version,
    about = "Parley: a multi-tenant chatbot builder backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate the database and serve (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the GraphQL schema (SDL) and exit.
    PrintSchema,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::PrintSchema) = cli.command {
        #[expect(
            clippy::print_stdout,
            reason = "printing the schema is this command's output"
        )]
        {
            print!("{}", parley::graphql::sdl());
        }
        return Ok(());
    }
    telemetry::init();
    let settings = Settings::from_env()?;
    match cli.command {
        Some(Command::Migrate) => {
            Db::connect(&settings.database_url).await?.migrate().await?;
            tracing::info!("migrations applied");
        }
        _ => {
            parley::edge::raise_open_files_limit();
            let app = Application::build(settings).await?;
            tracing::info!(port = app.port(), "parley listening; GraphiQL at /graphiql");
            app.run_until_stopped().await?;
        }
    }
    Ok(())
}
