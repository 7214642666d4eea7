//! Where users live: accounts, users, their roles, and token not-before times.
//!
//! Identification (`identity`) reads users from here; the admin CLI changes them. The
//! native directory is the gateway's own tables (`store::Database`, SQLite by default,
//! PostgreSQL for several instances). Each change is recorded in the database's change
//! feed and, with Redis configured, published at once, so every instance forgets what
//! it cached about that user or account.
//!
//! Model (DESIGN §2): each user belongs to exactly one account; users have user roles,
//! accounts have account roles; role names are free-form except that a name one or two
//! edits away from a known one is refused as a probable typo.

mod names;

use std::time::Duration;

pub use names::{
    BUILTIN_USER_ROLES, KNOWN_ACCOUNT_ROLES, NameError, normalize_email, validate_role,
};

/// The known role within two edits of `name`, if any (for typo hints).
pub fn nearest_role<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    names::nearest(name, known.iter().copied())
}

use crate::secret::Secret;
use crate::store::{Cluster, Database, StoreError};

pub type UserId = i64;
pub type AccountId = i64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub roles: Vec<String>,
    pub created_at: i64,
    /// How many users belong to it.
    pub users: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub account_id: AccountId,
    pub account_name: String,
    /// Lower-cased.
    pub email: String,
    pub active: bool,
    pub password_hash: Secret<String>,
    /// Unix seconds; tokens issued before are refused.
    pub tokens_not_before: i64,
    /// Unix seconds; web-login sessions begun before are refused.
    pub sessions_not_before: i64,
    pub roles: Vec<String>,
    pub account_roles: Vec<String>,
    pub created_at: i64,
    pub changed_at: i64,
}

/// A user's authenticator app (TOTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotpEnrollment {
    /// The shared secret, sealed with the web login's key.
    pub sealed_secret: String,
    /// The last time step accepted.
    pub last_step: i64,
    pub enrolled_at: i64,
}

/// Whether and how a user has set up second factors, for `user show` and `user 2fa show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondFactorState {
    /// When an authenticator app was enrolled.
    pub totp_enrolled_at: Option<i64>,
    pub recovery_codes_left: i64,
}

/// One entry of the change feed: which user or account changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub user: Option<UserId>,
    pub account: Option<AccountId>,
}

/// Why a directory operation failed; messages are for operators and hold no secrets.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("unknown account `{name}`{}", hint(.nearest))]
    UnknownAccount {
        name: String,
        nearest: Option<String>,
    },
    #[error("no user with email `{0}`")]
    UnknownUser(String),
    #[error("an account named `{0}` already exists")]
    DuplicateAccount(String),
    #[error("a user with email `{0}` already exists")]
    DuplicateEmail(String),
    /// The change is saved, but other instances could not be told at once; they
    /// see it at their next change-feed poll.
    #[error("change saved, but not announced: {0}")]
    Unannounced(StoreError),
}

fn hint(nearest: &Option<String>) -> String {
    nearest
        .as_ref()
        .map(|n| format!("; did you mean `{n}`?"))
        .unwrap_or_default()
}

/// Whether a role is granted or taken away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleChange {
    Add,
    Remove,
}

/// Whose roles: a user's or an account's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoleKind {
    User,
    Account,
}

/// The native directory: the database, and Redis when instances share state.
pub struct Directory {
    database: Database,
    cluster: Option<Cluster>,
    /// How long a shared not-before time must outlive a revocation: the token max age.
    token_max_age: Duration,
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The not-before time for a revocation now: token timestamps have whole seconds, so
/// tokens issued during the current second are revoked too. Tokens issued later in
/// that second are dated at the not-before time (see `identity::Authenticator::login`).
fn not_before_now() -> i64 {
    now() + 1
}

impl Directory {
    pub fn new(database: Database, cluster: Option<Cluster>, token_max_age: Duration) -> Self {
        Self {
            database,
            cluster,
            token_max_age,
        }
    }

    pub fn database(&self) -> &Database {
        &self.database
    }

    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// Publishes a change to the other instances. The database change feed carries it
    /// too, so a failed publish delays propagation to the poll interval; it is reported
    /// to the caller so an operator knows.
    async fn announce(&self, change: Change) -> Result<(), DirectoryError> {
        match &self.cluster {
            Some(cluster) => cluster
                .publish(&change)
                .await
                .map_err(DirectoryError::Unannounced),
            None => Ok(()),
        }
    }

    async fn announce_user(&self, user: UserId) -> Result<(), DirectoryError> {
        self.announce(Change {
            seq: 0,
            user: Some(user),
            account: None,
        })
        .await
    }

    pub async fn add_account(
        &self,
        name: &str,
        roles: &[String],
        allow_new_roles: bool,
    ) -> Result<AccountId, DirectoryError> {
        names::validate_account_name(name)?;
        let roles = self.checked_account_roles(roles, allow_new_roles).await?;
        match self.database.add_account(name, &roles, now()).await {
            Err(StoreError::Conflict) => Err(DirectoryError::DuplicateAccount(name.to_owned())),
            other => Ok(other?),
        }
    }

    pub async fn accounts(&self) -> Result<Vec<Account>, DirectoryError> {
        Ok(self.database.accounts().await?)
    }

    /// The named account, or an error naming the nearest existing one.
    pub async fn account(&self, name: &str) -> Result<Account, DirectoryError> {
        if let Some(account) = self.database.account(name).await? {
            return Ok(account);
        }
        let names: Vec<String> = self
            .database
            .accounts()
            .await?
            .into_iter()
            .map(|a| a.name)
            .collect();
        Err(DirectoryError::UnknownAccount {
            name: name.to_owned(),
            nearest: names::nearest(name, names.iter().map(String::as_str)).map(str::to_owned),
        })
    }

    pub async fn change_account_role(
        &self,
        account: &str,
        role: &str,
        change: RoleChange,
        allow_new: bool,
    ) -> Result<bool, DirectoryError> {
        let account = self.account(account).await?;
        let role = self
            .role_to_change(role, change, allow_new, RoleKind::Account)
            .await?;
        let changed = self
            .database
            .set_account_role(account.id, &role, change == RoleChange::Add, now())
            .await?;
        if changed {
            self.announce(Change {
                seq: 0,
                user: None,
                account: Some(account.id),
            })
            .await?;
        }
        Ok(changed)
    }

    /// Adds a user; `password_hash` is a bcrypt hash made by `identity::password`.
    pub async fn add_user(
        &self,
        account: &str,
        email: &str,
        password_hash: &str,
        roles: &[String],
        allow_new_roles: bool,
    ) -> Result<UserId, DirectoryError> {
        let email = normalize_email(email)?;
        let account = self.account(account).await?;
        let roles = self.checked_user_roles(roles, allow_new_roles).await?;
        match self
            .database
            .add_user(account.id, &email, password_hash, &roles, now())
            .await
        {
            Err(StoreError::Conflict) => Err(DirectoryError::DuplicateEmail(email)),
            other => Ok(other?),
        }
    }

    pub async fn user(&self, email: &str) -> Result<User, DirectoryError> {
        let email = normalize_email(email)?;
        self.database
            .user_by_email(&email)
            .await?
            .ok_or(DirectoryError::UnknownUser(email))
    }

    /// A user by email for login; `None` when there is none (no error, so the caller
    /// can spend the same time either way).
    pub async fn find_user(&self, email: &str) -> Result<Option<User>, StoreError> {
        match normalize_email(email) {
            Ok(email) => self.database.user_by_email(&email).await,
            Err(_) => Ok(None),
        }
    }

    /// A user by id with the shared not-before time applied (the later of the
    /// database's and Redis's). Fails when Redis is configured but unreachable.
    pub async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let Some(mut user) = self.database.user_by_id(id).await? else {
            return Ok(None);
        };
        if let Some(cluster) = &self.cluster
            && let Some(shared) = cluster.not_before(id).await?
        {
            user.tokens_not_before = user.tokens_not_before.max(shared);
        }
        Ok(Some(user))
    }

    pub async fn users(&self, account: Option<&str>) -> Result<Vec<User>, DirectoryError> {
        let account = match account {
            Some(name) => Some(self.account(name).await?.id),
            None => None,
        };
        Ok(self.database.users(account).await?)
    }

    /// Sets a new password hash; every earlier token of the user stops working.
    pub async fn set_password(
        &self,
        email: &str,
        password_hash: &str,
    ) -> Result<(), DirectoryError> {
        let user = self.user(email).await?;
        let at = not_before_now();
        self.database
            .set_password(user.id, password_hash, at)
            .await?;
        self.share_revocation(user.id, at).await?;
        Ok(())
    }

    pub async fn set_active(&self, email: &str, active: bool) -> Result<bool, DirectoryError> {
        let user = self.user(email).await?;
        if user.active == active {
            return Ok(false);
        }
        let at = not_before_now();
        self.database.set_active(user.id, active, at).await?;
        if active {
            self.announce_user(user.id).await?;
        } else {
            self.share_revocation(user.id, at).await?;
        }
        Ok(true)
    }

    /// Makes every token of the user issued up to now invalid, on every instance.
    pub async fn revoke_tokens(&self, email: &str) -> Result<UserId, DirectoryError> {
        let user = self.user(email).await?;
        let at = not_before_now();
        self.database.revoke_tokens(user.id, at).await?;
        self.share_revocation(user.id, at).await?;
        Ok(user.id)
    }

    /// Ends every web-login session of the user, on every instance.
    pub async fn revoke_sessions(&self, email: &str) -> Result<UserId, DirectoryError> {
        let user = self.user(email).await?;
        self.database
            .revoke_sessions(user.id, not_before_now())
            .await?;
        self.announce_user(user.id).await?;
        Ok(user.id)
    }

    /// The user's second factors.
    pub async fn second_factor(&self, email: &str) -> Result<SecondFactorState, DirectoryError> {
        let user = self.user(email).await?;
        Ok(SecondFactorState {
            totp_enrolled_at: self.database.totp(user.id).await?.map(|t| t.enrolled_at),
            recovery_codes_left: self.database.recovery_codes_left(user.id).await?,
        })
    }

    /// Removes the user's authenticator app and recovery codes and ends their
    /// sessions; the next login asks for an emailed code. False: nothing was enrolled.
    pub async fn reset_second_factor(&self, email: &str) -> Result<bool, DirectoryError> {
        let user = self.user(email).await?;
        let removed = self
            .database
            .reset_second_factor(user.id, not_before_now())
            .await?;
        self.announce_user(user.id).await?;
        Ok(removed)
    }

    async fn share_revocation(&self, user: UserId, at: i64) -> Result<(), DirectoryError> {
        if let Some(cluster) = &self.cluster {
            cluster
                .raise_not_before(user, at, self.token_max_age + Duration::from_secs(60))
                .await
                .map_err(DirectoryError::Unannounced)?;
        }
        self.announce_user(user).await
    }

    pub async fn change_user_role(
        &self,
        email: &str,
        role: &str,
        change: RoleChange,
        allow_new: bool,
    ) -> Result<bool, DirectoryError> {
        let user = self.user(email).await?;
        let role = self
            .role_to_change(role, change, allow_new, RoleKind::User)
            .await?;
        let changed = self
            .database
            .set_user_role(user.id, &role, change == RoleChange::Add, now())
            .await?;
        if changed {
            self.announce_user(user.id).await?;
        }
        Ok(changed)
    }

    /// The role name to add (checked for typos) or remove (as given).
    async fn role_to_change(
        &self,
        role: &str,
        change: RoleChange,
        allow_new: bool,
        kind: RoleKind,
    ) -> Result<String, DirectoryError> {
        if change == RoleChange::Remove {
            return Ok(role.to_owned());
        }
        let roles = [role.to_owned()];
        let checked = match kind {
            RoleKind::User => self.checked_user_roles(&roles, allow_new).await?,
            RoleKind::Account => self.checked_account_roles(&roles, allow_new).await?,
        };
        Ok(checked.into_iter().next().unwrap_or_default())
    }

    async fn checked_user_roles(
        &self,
        roles: &[String],
        allow_new: bool,
    ) -> Result<Vec<String>, DirectoryError> {
        let (in_use, _) = self.database.roles_in_use().await?;
        let known: Vec<&str> = BUILTIN_USER_ROLES
            .iter()
            .copied()
            .chain(in_use.iter().map(String::as_str))
            .collect();
        Ok(names::check_roles(roles, &known, allow_new)?)
    }

    async fn checked_account_roles(
        &self,
        roles: &[String],
        allow_new: bool,
    ) -> Result<Vec<String>, DirectoryError> {
        let (_, in_use) = self.database.roles_in_use().await?;
        let known: Vec<&str> = KNOWN_ACCOUNT_ROLES
            .iter()
            .copied()
            .chain(in_use.iter().map(String::as_str))
            .collect();
        Ok(names::check_roles(roles, &known, allow_new)?)
    }
}
