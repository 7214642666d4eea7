//! Command line: `run`, `check`, `certs dev`, `demo`, and the directory's admin
//! commands `account`, `user`, `token`, `directory`. Exit codes: 0 success,
//! 1 runtime failure, 2 usage error, 78 configuration error (EX_CONFIG).

use std::io::IsTerminal as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod admin;
mod policy;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, Report};
use crate::dev_certs::DevCertificates;
use crate::server::{self, Extras};

/// Configuration errors (sysexits.h EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;
pub const EXIT_FAILURE: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A TLS-terminating reverse-proxy authentication gateway",
    long_about = "Portcullis terminates TLS, redirects plain HTTP to HTTPS, canonicalizes request \
                  paths, strips spoofable headers and forwards only permitted requests to named \
                  backends.\n\nConfiguration: one TOML file (see deploy/portcullis.example.toml), \
                  with PORTCULLIS__SECTION__KEY environment overrides."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    ///
    /// SIGTERM stops accepting connections and lets requests finish for
    /// `[server] grace_period`; SIGINT stops at once.
    Run(ConfigFile),
    /// Check configuration and certificates without starting anything.
    ///
    /// Reports every problem at once with file:line:col and a hint. Exits 0 when the
    /// configuration can be run (warnings allowed), 78 otherwise.
    Check(ConfigFile),
    /// Certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Accounts in the native directory: add, list, show, roles.
    #[command(subcommand)]
    Account(admin::AccountCommand),
    /// Users in the native directory: add, list, show, passwd, (de)activate, roles.
    #[command(subcommand)]
    User(admin::UserCommand),
    /// Access tokens: issue one for a service account, revoke a user's tokens.
    #[command(subcommand)]
    Token(admin::TokenCommand),
    /// Web-login sessions: end a user's sessions.
    #[command(subcommand)]
    Session(admin::SessionCommand),
    /// Login lockouts after repeated failed logins: list them, lift them.
    ///
    /// A key that exceeds `[rate_limits] login_failures` may not log in for
    /// `[rate_limits] lockout`. Keys are `login=EMAIL`, `ip=ADDRESS` (IPv6 by its
    /// /64) or both joined with `|`.
    #[command(subcommand)]
    Lockout(admin::LockoutCommand),
    /// Policy files: run their test cases, explain a decision.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// The native directory's database: migrations.
    #[command(subcommand)]
    Directory(admin::DirectoryCommand),
    /// Print a shell completion script.
    ///
    /// bash: `portcullis completions bash > /etc/bash_completion.d/portcullis`;
    /// zsh: `portcullis completions zsh > "${fpath[1]}/_portcullis"`;
    /// fish: `portcullis completions fish > ~/.config/fish/completions/portcullis.fish`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Start the gateway on embedded defaults in front of a built-in demo backend.
    ///
    /// Writes a development CA and localhost certificate into --certs, then serves
    /// https on 127.0.0.1:--https-port and redirects http from --http-port.
    Demo {
        /// Directory for the development certificates.
        #[arg(long, default_value = "certs")]
        certs: PathBuf,
        /// Directory for the demo's users (SQLite), token secret and password.
        #[arg(long, default_value = "demo-data")]
        data: PathBuf,
        #[arg(long, default_value_t = 8443)]
        https_port: u16,
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        /// Print the generated configuration and exit.
        #[arg(long)]
        print_config: bool,
    },
}

/// Where the configuration is.
#[derive(Debug, clap::Args)]
pub struct ConfigFile {
    /// Configuration file.
    #[arg(
        short,
        long,
        env = "PORTCULLIS_CONFIG",
        default_value = "portcullis.toml"
    )]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write a development CA and a localhost certificate (never for production).
    ///
    /// Files: DIR/dev-ca.pem (trust this in clients), DIR/localhost.pem (chain),
    /// DIR/localhost-key.pem (mode 0600).
    Dev {
        /// Output directory.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
}

/// Runs the parsed command line.
pub fn execute(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(ConfigFile { config }) => run(&config),
        Command::Check(ConfigFile { config }) => check(&config),
        Command::Certs(CertsCommand::Dev { dir }) => certs_dev(&dir),
        Command::Account(command) => admin::account(command),
        Command::User(command) => admin::user(command),
        Command::Token(command) => admin::token(command),
        Command::Session(command) => admin::session(command),
        Command::Directory(command) => admin::directory(command),
        Command::Lockout(command) => admin::lockout(command),
        Command::Policy(command) => policy::execute(command),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "portcullis",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Demo {
            certs,
            data,
            https_port,
            http_port,
            print_config,
        } => demo(
            &DemoPaths {
                certs: &certs,
                data: &data,
            },
            https_port,
            http_port,
            print_config,
        ),
    }
}

fn color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Loads and fully checks a configuration: the file, then the certificates it names.
pub fn load_checked(path: &Path) -> (Option<Config>, Report) {
    let loaded = config::load(path);
    let mut report = loaded.report;
    if let Some(config) = &loaded.config {
        report.problems.extend(crate::tls::check(config));
    }
    let config = if report.has_errors() {
        None
    } else {
        loaded.config
    };
    (config, report)
}

fn check(path: &Path) -> ExitCode {
    let (config, report) = load_checked(path);
    if !report.problems.is_empty() {
        eprint!("{}", report.render(color()));
    }
    match config {
        Some(config) => {
            println!(
                "{}: ok ({} route(s), {} backend(s), {} warning(s))",
                path.display(),
                config.routes.len(),
                config.backends.len(),
                report.warnings()
            );
            ExitCode::SUCCESS
        }
        None => ExitCode::from(EXIT_CONFIG),
    }
}

fn run(path: &Path) -> ExitCode {
    claim_reload_signals();
    let (config, report) = load_checked(path);
    if !report.problems.is_empty() {
        eprint!("{}", report.render(color()));
    }
    let Some(config) = config else {
        return ExitCode::from(EXIT_CONFIG);
    };
    serve(&config, &Extras::default())
}

/// SIGHUP (`systemctl reload`) and SIGUSR1 (log rotation) end a process by default.
/// Both are claimed before the configuration is read, so that one sent while the
/// gateway starts is harmless; once running, the policy reloader and the audit writer
/// act on them. A claim lasts for the life of the process (tokio never gives a
/// signal back to its default action), so the runtime made for it can go.
fn claim_reload_signals() {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("warning: SIGHUP and SIGUSR1 stay fatal until the gateway runs: {error}");
            return;
        }
    };
    let _entered = runtime.enter();
    for (name, kind) in [
        ("SIGHUP", SignalKind::hangup()),
        ("SIGUSR1", SignalKind::user_defined1()),
    ] {
        if let Err(error) = signal(kind) {
            eprintln!("warning: {name} stays fatal until the gateway runs: {error}");
        }
    }
}

fn serve(config: &Config, extras: &Extras) -> ExitCode {
    crate::telemetry::init(&config.log);
    match server::build(config, extras) {
        Ok(gateway) => {
            server::run(gateway);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn certs_dev(dir: &Path) -> ExitCode {
    match write_dev_certificates(dir) {
        Ok(paths) => {
            println!(
                "wrote {} (trust this CA in clients), {} and {}",
                paths.ca.display(),
                paths.certificate.display(),
                paths.private_key.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn write_dev_certificates(dir: &Path) -> Result<crate::dev_certs::DevCertificatePaths, String> {
    let certificates =
        DevCertificates::generate().map_err(|e| format!("cannot generate certificates: {e}"))?;
    certificates
        .write(dir)
        .map_err(|e| format!("cannot write certificates into `{}`: {e}", dir.display()))
}

/// Where the demo keeps its files.
struct DemoPaths<'a> {
    certs: &'a Path,
    data: &'a Path,
}

fn demo(paths: &DemoPaths<'_>, https_port: u16, http_port: u16, print_config: bool) -> ExitCode {
    let certs = paths.certs;
    // `localhost` is often ::1 first; listen there too when the machine has IPv6.
    let loopbacks: Vec<IpAddr> = [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ]
    .into_iter()
    .filter(|ip| TcpListener::bind((*ip, 0)).is_ok())
    .collect();
    let https: Vec<SocketAddr> = loopbacks
        .iter()
        .map(|ip| SocketAddr::new(*ip, https_port))
        .collect();
    let http: Vec<SocketAddr> = loopbacks
        .iter()
        .map(|ip| SocketAddr::new(*ip, http_port))
        .collect();
    // The demo backend and the admin listener take any free loopback ports.
    let free = || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr());
    let (backend, admin) = match (free(), free()) {
        (Ok(backend), Ok(admin)) => (backend, admin),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("error: no free loopback port: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let certificates = match write_dev_certificates(certs) {
        Ok(paths) => paths,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let data = match crate::demo::prepare_data(paths.data) {
        Ok(()) => absolute(paths.data),
        Err(error) => {
            eprintln!("error: cannot prepare `{}`: {error}", paths.data.display());
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let text = crate::demo::config_text(
        &https,
        &http,
        backend,
        admin,
        &absolute(&certificates.certificate),
        &absolute(&certificates.private_key),
        &data,
    );
    if print_config {
        print!("{text}");
        return ExitCode::SUCCESS;
    }
    let loaded = config::parse(&absolute(certs).join("demo.toml"), text, Vec::new());
    let Some(config) = loaded.config else {
        eprint!("{}", loaded.report.render(color()));
        return ExitCode::from(EXIT_CONFIG);
    };
    if let Err(error) = crate::demo::seed(&config, &data) {
        eprintln!("error: cannot create the demo user: {error}");
        return ExitCode::from(EXIT_FAILURE);
    }
    println!(
        "{}",
        crate::demo::banner(https_port, http_port, admin, &certificates.ca, &data)
    );
    serve(
        &config,
        &Extras {
            demo_backend: Some(backend),
        },
    )
}
