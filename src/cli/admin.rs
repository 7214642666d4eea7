//! Server-local administration of the native directory: accounts, users, roles,
//! passwords and tokens. Runs against the database (and Redis) named in the
//! gateway's configuration; running gateways pick changes up through the change feed
//! (within `[directory] change_poll`) or at once through Redis. Every change is also
//! stored in `admin_events`, which a running gateway copies into its audit stream.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{EXIT_CONFIG, EXIT_FAILURE, color};
use crate::audit::AdminEvent;
use crate::config::{self, Config};
use crate::directory::{Directory, DirectoryError, RoleChange};
use crate::identity::{DirectoryTaskError, password};
use crate::secret::Secret;
use crate::token::{self, TokenKeys};

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Add an account.
    Add {
        name: String,
        /// An account role (repeatable), e.g. `Prosumer` or `MyService-subscriber`.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Accept role names close to a known one (otherwise refused as a typo).
        #[arg(long)]
        new_role: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List accounts with their roles and number of users.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show one account.
    Show {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Add or remove account roles.
    #[command(subcommand)]
    Roles(AccountRolesCommand),
}

#[derive(Debug, Subcommand)]
pub enum AccountRolesCommand {
    /// Give an account a role.
    Add(AccountRole),
    /// Take a role from an account.
    Remove(AccountRole),
}

#[derive(Debug, Args)]
pub struct AccountRole {
    /// The account's name.
    account: String,
    role: String,
    /// Accept a role name close to a known one (otherwise refused as a typo).
    #[arg(long)]
    new_role: bool,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user to an account. The password is asked for on the terminal (twice),
    /// or read from the first line of standard input with --password-stdin; never
    /// pass it as an argument.
    Add {
        #[arg(long)]
        email: String,
        #[arg(long)]
        account: String,
        /// A user role (repeatable): admin, admin-reader, account-admin, consultant,
        /// or a custom one.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        #[arg(long)]
        new_role: bool,
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List users, optionally of one account.
    List {
        #[arg(long)]
        account: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show one user.
    Show {
        email: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Set a new password; every token and web-login session begun before stops working.
    Passwd {
        email: String,
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Deactivate a user: logins are refused and every token and session stops working.
    Deactivate {
        email: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Activate a user again (earlier tokens stay revoked).
    Activate {
        email: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Add or remove user roles.
    #[command(subcommand)]
    Roles(UserRolesCommand),
    /// Second factors of the web login: show a user's, or reset them.
    #[command(subcommand, name = "2fa")]
    SecondFactor(SecondFactorCommand),
}

#[derive(Debug, Subcommand)]
pub enum SecondFactorCommand {
    /// Whether the user has an authenticator app, and how many recovery codes are left.
    Show {
        email: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove the user's authenticator app and recovery codes (a lost phone) and
    /// end their web-login sessions; their next login asks for an emailed code.
    Reset {
        email: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// End every web-login session of a user, on every instance (API tokens stay
    /// valid; `token revoke` ends those).
    Revoke {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserRolesCommand {
    /// Give a user a role.
    Add(UserRole),
    /// Take a role from a user.
    Remove(UserRole),
}

#[derive(Debug, Args)]
pub struct UserRole {
    email: String,
    role: String,
    #[arg(long)]
    new_role: bool,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token for a user without their password (for service accounts). It is
    /// printed on standard output and valid for the token max age.
    Issue {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Revoke every token of a user issued until now, on every instance.
    Revoke {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum DirectoryCommand {
    /// Apply pending database migrations (the gateway also does at start).
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// The configuration file argument, shared with `run` and `check`.
pub use super::ConfigFile as ConfigArg;

/// A failed admin command: what to print and the exit code.
struct Failure(String, u8);

impl From<DirectoryError> for Failure {
    fn from(error: DirectoryError) -> Self {
        match error {
            // Saved, only the instant notice failed: a warning, not a failure.
            DirectoryError::Unannounced(cause) => Failure(
                format!(
                    "the change is saved, but redis could not be told ({cause}); other instances see it within `[directory] change_poll`"
                ),
                0,
            ),
            other => Failure(other.to_string(), EXIT_FAILURE),
        }
    }
}

type Outcome = Result<String, Failure>;

fn finish(outcome: Outcome) -> ExitCode {
    match outcome {
        Ok(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(Failure(message, 0)) => {
            eprintln!("warning: {message}");
            ExitCode::SUCCESS
        }
        Err(Failure(message, code)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum LockoutCommand {
    /// List the lockouts in force: key, end, time left and the limit exceeded.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Lift lockouts now, so the key may log in again. A further failure within the
    /// failed-login limit's window locks it out again.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["login", "ip", "key", "all"])))]
    Lift {
        /// The lockout of a login name (an email).
        #[arg(long, conflicts_with_all = ["ip", "key", "all"])]
        login: Option<String>,
        /// The lockout of a client address.
        #[arg(long, conflicts_with_all = ["key", "all"])]
        ip: Option<std::net::IpAddr>,
        /// A key exactly as `lockout list` shows it.
        #[arg(long, conflicts_with = "all")]
        key: Option<String>,
        /// Every lockout.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn lockout(command: LockoutCommand) -> ExitCode {
    match command {
        LockoutCommand::List { config } => with_state(&config.config, async |_, directory| {
            let now = crate::directory::now();
            let lockouts = directory
                .database()
                .lockouts(now)
                .await
                .map_err(|e| Failure(e.to_string(), EXIT_FAILURE))?;
            if lockouts.is_empty() {
                return Ok("no lockouts in force".into());
            }
            let mut out = format!(
                "{:<40} {:<20} {:>8}  LIMIT EXCEEDED\n",
                "KEY", "UNTIL (UTC)", "LEFT"
            );
            for lockout in lockouts {
                out.push_str(&format!(
                    "{:<40} {:<20} {:>7}s  {}\n",
                    lockout.key,
                    utc(lockout.until),
                    lockout.until - now,
                    lockout.reason
                ));
            }
            Ok(out.trim_end().to_owned())
        }),
        LockoutCommand::Lift {
            login,
            ip,
            key,
            all: _,
            config,
        } => with_state(&config.config, async |config, directory| {
            // Keys as the gateway writes them; `None` (--all): every lockout.
            let key = match (login, ip, key) {
                (Some(login), _, _) => Some(crate::rate_limit::login_key(&login)),
                (_, Some(ip), _) => Some(crate::rate_limit::lockout::ip_key(
                    ip,
                    config.rate_limits.ipv6_prefix,
                )),
                (_, _, key) => key,
            };
            let lifted = directory
                .database()
                .lift_lockouts(key.as_deref())
                .await
                .map_err(|e| Failure(e.to_string(), EXIT_FAILURE))?;
            if lifted > 0 {
                let what = key.as_deref().map_or_else(
                    || format!("every lockout ({lifted})"),
                    |key| format!("key `{key}`"),
                );
                audit(directory, "lockout-lifted", what).await;
            }
            Ok(match (lifted, key) {
                (0, Some(key)) => format!("`{key}` is not locked out"),
                (_, Some(key)) => format!("lifted the lockout of `{key}`"),
                (n, None) => format!("lifted {n} lockout(s)"),
            })
        }),
    }
}

/// Stores a change for the gateway's audit stream (see [`AdminEvent`]). The change
/// is made already; failing to store it is a warning.
async fn audit(directory: &Directory, event: &str, detail: String) {
    let record = AdminEvent {
        at: crate::directory::now(),
        event: event.to_owned(),
        detail,
        operator: operator(),
    };
    if let Err(error) = directory.database().record_admin_event(&record).await {
        eprintln!(
            "warning: the change is made, but it could not be stored for the audit log ({error})"
        );
    }
}

/// `user@host` of whoever runs the command: `SUDO_USER` (the person behind `sudo`),
/// else `USER` or `LOGNAME`, else the numeric uid.
fn operator() -> String {
    let user = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| {
            std::fs::metadata("/proc/self")
                .map(|m| format!("uid {}", std::os::unix::fs::MetadataExt::uid(&m)))
                .unwrap_or_else(|_| "unknown".into())
        });
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS`.
fn utc(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix).map_or_else(
        |_| unix.to_string(),
        |t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        },
    )
}

/// Loads the configuration and opens its native directory, with migrations applied.
/// Users of a FlexMeasures directory are managed in FlexMeasures.
fn with_directory<F>(path: &Path, work: F) -> ExitCode
where
    F: AsyncFnOnce(&Config, &Directory) -> Outcome,
{
    open_and_run(path, true, work)
}

/// Loads the configuration and opens the gateway's own tables (the native directory,
/// or a FlexMeasures directory's `state`), with migrations applied.
fn with_state<F>(path: &Path, work: F) -> ExitCode
where
    F: AsyncFnOnce(&Config, &Directory) -> Outcome,
{
    open_and_run(path, false, work)
}

fn open_and_run<F>(path: &Path, users: bool, work: F) -> ExitCode
where
    F: AsyncFnOnce(&Config, &Directory) -> Outcome,
{
    let loaded = config::load(path);
    // Warnings are for `portcullis check`; admin commands show only what stops them.
    if loaded.report.has_errors() {
        eprint!("{}", loaded.report.render(color()));
    }
    let Some(config) = loaded.config else {
        return ExitCode::from(EXIT_CONFIG);
    };
    if users
        && config
            .directory
            .as_ref()
            .is_some_and(|d| d.kind == config::DirectoryKind::FlexMeasures)
    {
        return finish(Err(Failure(
            "users, accounts, roles and tokens of a FlexMeasures directory are managed in FlexMeasures (e.g. `flexmeasures add user`); the gateway only reads them".into(),
            EXIT_CONFIG,
        )));
    }
    match crate::identity::with_directory(&config, async |directory| work(&config, directory).await)
    {
        Ok(outcome) => finish(outcome),
        Err(DirectoryTaskError::NoDirectory) => finish(Err(Failure(
            format!(
                "{} has no [directory] section; add one, e.g. `database = \"sqlite:portcullis.db\"`",
                path.display()
            ),
            EXIT_CONFIG,
        ))),
        Err(error) => finish(Err(Failure(error.to_string(), EXIT_FAILURE))),
    }
}

/// Reads a new password: from the first line of stdin, or twice from the terminal.
fn read_password(from_stdin: bool) -> Result<Secret<String>, Failure> {
    let fail = |message: String| Failure(message, EXIT_FAILURE);
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| fail(format!("cannot read the password: {e}")))?;
        let password = line.trim_end_matches(['\r', '\n']).to_owned();
        return Ok(Secret::new(password));
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure(
            "standard input is not a terminal; pass --password-stdin to read the password from it"
                .into(),
            2,
        ));
    }
    let first = rpassword::prompt_password("New password: ")
        .map_err(|e| fail(format!("cannot read the password: {e}")))?;
    let second = rpassword::prompt_password("Repeat it: ")
        .map_err(|e| fail(format!("cannot read the password: {e}")))?;
    if first != second {
        return Err(fail("the passwords differ; nothing changed".into()));
    }
    Ok(Secret::new(first))
}

/// Hashes a new password with the configured cost; refuses bad ones clearly.
fn new_hash(config: &Config, from_stdin: bool) -> Result<String, Failure> {
    let password = read_password(from_stdin)?;
    let cost = config.directory.as_ref().map_or(12, |d| d.bcrypt_cost);
    password::hash(&password, cost).map_err(|e| Failure(e.to_string(), EXIT_FAILURE))
}

fn roles_text(roles: &[String]) -> String {
    if roles.is_empty() {
        "-".into()
    } else {
        roles.join(",")
    }
}

fn timestamp(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| seconds.to_string())
}

pub fn account(command: AccountCommand) -> ExitCode {
    match command {
        AccountCommand::Add {
            name,
            roles,
            new_role,
            config,
        } => with_directory(&config.config, async |_, directory| {
            let id = directory.add_account(&name, &roles, new_role).await?;
            audit(
                directory,
                "account-added",
                format!("account `{name}` (id {id})"),
            )
            .await;
            Ok(format!("added account `{name}` (id {id})"))
        }),
        AccountCommand::List { config } => with_directory(&config.config, async |_, directory| {
            let mut out = format!("{:<6} {:<32} {:>6}  ROLES", "ID", "NAME", "USERS");
            for account in directory.accounts().await? {
                out.push_str(&format!(
                    "\n{:<6} {:<32} {:>6}  {}",
                    account.id,
                    account.name,
                    account.users,
                    roles_text(&account.roles)
                ));
            }
            Ok(out)
        }),
        AccountCommand::Show { name, config } => {
            with_directory(&config.config, async |_, directory| {
                let account = directory.account(&name).await?;
                let users = directory.users(Some(&name)).await?;
                let mut out = format!(
                    "account  {}\nid       {}\nroles    {}\ncreated  {}\nusers    {}",
                    account.name,
                    account.id,
                    roles_text(&account.roles),
                    timestamp(account.created_at),
                    account.users
                );
                for user in users {
                    out.push_str(&format!("\n  {} ({})", user.email, roles_text(&user.roles)));
                }
                Ok(out)
            })
        }
        AccountCommand::Roles(roles) => {
            let (change, args) = match roles {
                AccountRolesCommand::Add(args) => (RoleChange::Add, args),
                AccountRolesCommand::Remove(args) => (RoleChange::Remove, args),
            };
            with_directory(&args.config.config, async |_, directory| {
                let changed = directory
                    .change_account_role(&args.account, &args.role, change, args.new_role)
                    .await?;
                if changed {
                    let detail = format!("account `{}`: role `{}`", args.account, args.role);
                    audit(directory, role_event("account", change), detail).await;
                }
                Ok(role_message(changed, change, &args.role, &args.account))
            })
        }
    }
}

/// `account-role-added`, `user-role-removed`, …
fn role_event(owner: &str, change: RoleChange) -> &'static str {
    match (owner, change) {
        ("account", RoleChange::Add) => "account-role-added",
        ("account", RoleChange::Remove) => "account-role-removed",
        (_, RoleChange::Add) => "user-role-added",
        (_, RoleChange::Remove) => "user-role-removed",
    }
}

fn role_message(changed: bool, change: RoleChange, role: &str, owner: &str) -> String {
    match (changed, change) {
        (true, RoleChange::Add) => format!("`{owner}` now has role `{role}`"),
        (true, RoleChange::Remove) => format!("`{owner}` no longer has role `{role}`"),
        (false, RoleChange::Add) => format!("`{owner}` already had role `{role}`"),
        (false, RoleChange::Remove) => format!("`{owner}` did not have role `{role}`"),
    }
}

pub fn user(command: UserCommand) -> ExitCode {
    match command {
        UserCommand::Add {
            email,
            account,
            roles,
            new_role,
            password_stdin,
            config,
        } => with_directory(&config.config, async |config, directory| {
            // Check what can be checked before asking for a password.
            directory.account(&account).await?;
            let hash = new_hash(config, password_stdin)?;
            let id = directory
                .add_user(&account, &email, &hash, &roles, new_role)
                .await?;
            let detail = format!(
                "user `{}` (id {id}) in account `{account}`",
                email.trim().to_lowercase()
            );
            audit(directory, "user-added", detail).await;
            Ok(format!(
                "added user `{}` (id {id}) to account `{account}`",
                email.trim().to_lowercase()
            ))
        }),
        UserCommand::List { account, config } => {
            with_directory(&config.config, async |_, directory| {
                let mut out = format!(
                    "{:<6} {:<40} {:<24} {:<8} ROLES",
                    "ID", "EMAIL", "ACCOUNT", "ACTIVE"
                );
                for user in directory.users(account.as_deref()).await? {
                    out.push_str(&format!(
                        "\n{:<6} {:<40} {:<24} {:<8} {}",
                        user.id,
                        user.email,
                        user.account_name,
                        if user.active { "yes" } else { "no" },
                        roles_text(&user.roles)
                    ));
                }
                Ok(out)
            })
        }
        UserCommand::Show { email, config } => {
            with_directory(&config.config, async |_, directory| {
                let user = directory.user(&email).await?;
                let second = directory.second_factor(&email).await?;
                Ok(format!(
                    "user           {}\nid             {}\naccount        {} (id {})\nactive         {}\nroles          {}\naccount roles  {}\ncreated        {}\nchanged        {}\ntokens since   {}\nsessions since {}\n2fa            {}",
                    user.email,
                    user.id,
                    user.account_name,
                    user.account_id,
                    if user.active { "yes" } else { "no" },
                    roles_text(&user.roles),
                    roles_text(&user.account_roles),
                    timestamp(user.created_at),
                    timestamp(user.changed_at),
                    if user.tokens_not_before == 0 {
                        "-".into()
                    } else {
                        timestamp(user.tokens_not_before)
                    },
                    if user.sessions_not_before == 0 {
                        "-".into()
                    } else {
                        timestamp(user.sessions_not_before)
                    },
                    second_factor_text(&second),
                ))
            })
        }
        UserCommand::Passwd {
            email,
            password_stdin,
            config,
        } => with_directory(&config.config, async |config, directory| {
            let user = directory.user(&email).await?;
            let hash = new_hash(config, password_stdin)?;
            directory.set_password(&email, &hash).await?;
            let detail = format!("user `{}` (id {})", user.email, user.id);
            audit(directory, "password-changed", detail).await;
            Ok(format!(
                "password of `{email}` changed; earlier tokens and sessions no longer work"
            ))
        }),
        UserCommand::Deactivate { email, config } => {
            with_directory(&config.config, async |_, directory| {
                Ok(if directory.set_active(&email, false).await? {
                    audit(directory, "user-deactivated", format!("user `{email}`")).await;
                    format!("`{email}` deactivated; its tokens and sessions no longer work")
                } else {
                    format!("`{email}` was already inactive")
                })
            })
        }
        UserCommand::Activate { email, config } => {
            with_directory(&config.config, async |_, directory| {
                Ok(if directory.set_active(&email, true).await? {
                    audit(directory, "user-activated", format!("user `{email}`")).await;
                    format!("`{email}` activated")
                } else {
                    format!("`{email}` was already active")
                })
            })
        }
        UserCommand::Roles(roles) => {
            let (change, args) = match roles {
                UserRolesCommand::Add(args) => (RoleChange::Add, args),
                UserRolesCommand::Remove(args) => (RoleChange::Remove, args),
            };
            with_directory(&args.config.config, async |_, directory| {
                let changed = directory
                    .change_user_role(&args.email, &args.role, change, args.new_role)
                    .await?;
                if changed {
                    let detail = format!("user `{}`: role `{}`", args.email, args.role);
                    audit(directory, role_event("user", change), detail).await;
                }
                Ok(role_message(changed, change, &args.role, &args.email))
            })
        }
        UserCommand::SecondFactor(SecondFactorCommand::Show { email, config }) => {
            with_directory(&config.config, async |_, directory| {
                let second = directory.second_factor(&email).await?;
                Ok(format!(
                    "`{}`: {}",
                    email.trim().to_lowercase(),
                    second_factor_text(&second)
                ))
            })
        }
        UserCommand::SecondFactor(SecondFactorCommand::Reset { email, config }) => {
            with_directory(&config.config, async |_, directory| {
                let removed = directory.reset_second_factor(&email).await?;
                let detail = format!("user `{email}`, authenticator app removed: {removed}");
                audit(directory, "second-factor-reset", detail).await;
                Ok(if removed {
                    format!(
                        "authenticator app and recovery codes of `{email}` removed; its sessions ended; the next login asks for an emailed code"
                    )
                } else {
                    format!("`{email}` had no authenticator app; its sessions ended")
                })
            })
        }
    }
}

/// `authenticator app since …, N recovery codes left`, or emailed codes only.
fn second_factor_text(state: &crate::directory::SecondFactorState) -> String {
    match state.totp_enrolled_at {
        Some(at) => format!(
            "authenticator app since {}, {} recovery codes left",
            timestamp(at),
            state.recovery_codes_left
        ),
        None => "emailed codes (no authenticator app)".to_owned(),
    }
}

pub fn session(command: SessionCommand) -> ExitCode {
    match command {
        SessionCommand::Revoke { user, config } => {
            with_directory(&config.config, async |_, directory| {
                let id = directory.revoke_sessions(&user).await?;
                audit(
                    directory,
                    "sessions-revoked",
                    format!("user `{user}` (id {id})"),
                )
                .await;
                Ok(format!(
                    "every web-login session of `{user}` (id {id}) begun until now is ended"
                ))
            })
        }
    }
}

pub fn token(command: TokenCommand) -> ExitCode {
    match command {
        TokenCommand::Issue { user, config } => {
            with_directory(&config.config, async |config, directory| {
                let user = directory.user(&user).await?;
                if !user.active {
                    return Err(Failure(
                        format!("`{}` is inactive; activate it first", user.email),
                        EXIT_FAILURE,
                    ));
                }
                let keys = TokenKeys::from_settings(&config.tokens)
                    .ok_or_else(|| Failure("no [tokens] secrets configured".into(), EXIT_CONFIG))?;
                let crypt = token::password_crypt(user.password_hash.expose());
                let issued_at = crate::directory::now().max(user.tokens_not_before);
                let token = keys.issue(user.id, &crypt, issued_at);
                let detail = format!("user `{}` (id {})", user.email, user.id);
                audit(directory, "token-issued", detail).await;
                eprintln!(
                    "token for `{}` (id {}), valid for {}",
                    user.email,
                    user.id,
                    humantime::format_duration(config.tokens.max_age)
                );
                let _ = std::io::stderr().flush();
                Ok(token)
            })
        }
        TokenCommand::Revoke { user, config } => {
            with_directory(&config.config, async |_, directory| {
                let id = directory.revoke_tokens(&user).await?;
                audit(
                    directory,
                    "tokens-revoked",
                    format!("user `{user}` (id {id})"),
                )
                .await;
                Ok(format!(
                    "every token of `{user}` (id {id}) issued until now is revoked"
                ))
            })
        }
    }
}

pub fn directory(command: DirectoryCommand) -> ExitCode {
    match command {
        DirectoryCommand::Migrate { config } => with_directory(&config.config, async |_, _| {
            Ok("directory is up to date".into())
        }),
    }
}
