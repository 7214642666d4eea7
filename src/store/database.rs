//! The native directory's tables on SQLite or PostgreSQL.
//!
//! Both engines run the same SQL text (`$N` placeholders work on both); the
//! `on_engine!` macro compiles each query once per engine so types are checked for
//! both. Every write records a row in `directory_changes` in the same transaction,
//! which running gateways poll to forget cached users.

use std::str::FromStr as _;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};

use super::StoreError;
use crate::audit::AdminEvent;
use crate::directory::{Account, AccountId, Change, TotpEnrollment, User, UserId};
use crate::rate_limit::lockout::Lockout;
use crate::secret::Secret;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// A pool on one of the two engines.
#[derive(Clone)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever engine's pool this is.
macro_rules! on_engine {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Database::Sqlite($pool) => $body,
            Database::Postgres($pool) => $body,
        }
    };
}

/// Appends to `directory_changes` inside the transaction `$tx`.
macro_rules! record_change {
    ($tx:ident, $user:expr, $account:expr, $now:expr) => {
        sqlx::query("INSERT INTO directory_changes (user_id, account_id, at) VALUES ($1, $2, $3)")
            .bind($user)
            .bind($account)
            .bind($now)
            .execute(&mut *$tx)
            .await
            .map_err(unavailable)?
    };
}

/// Inserts `(owner, value)` for each value (roles, recovery codes) inside the
/// transaction `$tx`.
macro_rules! insert_pairs {
    ($tx:ident, $sql:expr, $owner:expr, $values:expr) => {
        for value in $values {
            sqlx::query($sql)
                .bind($owner)
                .bind(value)
                .execute(&mut *$tx)
                .await
                .map_err(unavailable)?;
        }
    };
}

type UserRow = (i64, i64, String, String, bool, String, i64, i64, i64, i64);
const USER_COLUMNS: &str = "SELECT u.id, u.account_id, a.name, u.email, u.active, \
     u.password_hash, u.tokens_not_before, u.sessions_not_before, u.created_at, u.changed_at \
     FROM users u JOIN accounts a ON a.id = u.account_id";

fn unavailable(error: sqlx::Error) -> StoreError {
    if let Some(database) = error.as_database_error()
        && database.is_unique_violation()
    {
        return StoreError::Conflict;
    }
    StoreError::Unavailable(error.to_string())
}

impl Database {
    /// Opens a pool: `sqlite:PATH` (created when missing) or `postgres://…`.
    /// Connections are made lazily, so a gateway starts while the database is down
    /// and recovers when it returns.
    pub fn connect(url: &str, max_connections: u32, timeout: Duration) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| StoreError::BadUrl(e.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .foreign_keys(true)
                .busy_timeout(timeout);
            Ok(Self::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(timeout)
                    .connect_lazy_with(options),
            ))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options =
                PgConnectOptions::from_str(url).map_err(|e| StoreError::BadUrl(e.to_string()))?;
            Ok(Self::Postgres(
                PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(timeout)
                    .connect_lazy_with(options),
            ))
        } else {
            Err(StoreError::BadUrl(
                "expected `sqlite:PATH` or `postgres://…`".into(),
            ))
        }
    }

    /// Applies pending migrations (PostgreSQL serializes concurrent runs with an
    /// advisory lock, so replicas may start together).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let result = match self {
            Self::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await,
            Self::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await,
        };
        result.map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_engine!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop))
            .map_err(unavailable)
    }

    pub async fn close(&self) {
        on_engine!(self, pool => pool.close().await);
    }

    pub async fn add_account(
        &self,
        name: &str,
        roles: &[String],
        now: i64,
    ) -> Result<AccountId, StoreError> {
        on_engine!(self, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO accounts (name, created_at, changed_at) VALUES ($1, $2, $2) RETURNING id",
            )
            .bind(name)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
            insert_pairs!(tx, "INSERT INTO account_roles (account_id, role) VALUES ($1, $2)", id, roles);
            record_change!(tx, None::<i64>, Some(id), now);
            tx.commit().await.map_err(unavailable)?;
            Ok(id)
        })
    }

    pub async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let rows: Vec<(i64, String, i64, i64)> = on_engine!(self, pool => sqlx::query_as(
            "SELECT a.id, a.name, a.created_at, \
             (SELECT COUNT(*) FROM users u WHERE u.account_id = a.id) \
             FROM accounts a ORDER BY a.name",
        )
        .fetch_all(pool)
        .await)
        .map_err(unavailable)?;
        let mut accounts = Vec::with_capacity(rows.len());
        for (id, name, created_at, users) in rows {
            accounts.push(Account {
                roles: self.account_roles(id).await?,
                id,
                name,
                created_at,
                users,
            });
        }
        Ok(accounts)
    }

    pub async fn account(&self, name: &str) -> Result<Option<Account>, StoreError> {
        let row: Option<(i64, String, i64, i64)> = on_engine!(self, pool => sqlx::query_as(
            "SELECT a.id, a.name, a.created_at, \
             (SELECT COUNT(*) FROM users u WHERE u.account_id = a.id) \
             FROM accounts a WHERE a.name = $1",
        )
        .bind(name)
        .fetch_optional(pool)
        .await)
        .map_err(unavailable)?;
        match row {
            None => Ok(None),
            Some((id, name, created_at, users)) => Ok(Some(Account {
                roles: self.account_roles(id).await?,
                id,
                name,
                created_at,
                users,
            })),
        }
    }

    async fn account_roles(&self, account: AccountId) -> Result<Vec<String>, StoreError> {
        self.roles(
            "SELECT role FROM account_roles WHERE account_id = $1 ORDER BY role",
            account,
        )
        .await
    }

    async fn user_roles(&self, user: UserId) -> Result<Vec<String>, StoreError> {
        self.roles(
            "SELECT role FROM user_roles WHERE user_id = $1 ORDER BY role",
            user,
        )
        .await
    }

    /// Role names from a query with one id parameter.
    async fn roles(&self, sql: &str, owner: i64) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = on_engine!(self, pool => sqlx::query_as(sql)
            .bind(owner)
            .fetch_all(pool)
            .await)
        .map_err(unavailable)?;
        Ok(rows.into_iter().map(|(role,)| role).collect())
    }

    /// Adds (`grant`) or removes an account role; returns whether anything changed.
    pub async fn set_account_role(
        &self,
        account: AccountId,
        role: &str,
        grant: bool,
        now: i64,
    ) -> Result<bool, StoreError> {
        let sql = if grant {
            "INSERT INTO account_roles (account_id, role) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM account_roles WHERE account_id = $1 AND role = $2"
        };
        self.change_membership(sql, None, Some(account), role, now)
            .await
    }

    /// Adds (`grant`) or removes a user role; returns whether anything changed.
    pub async fn set_user_role(
        &self,
        user: UserId,
        role: &str,
        grant: bool,
        now: i64,
    ) -> Result<bool, StoreError> {
        let sql = if grant {
            "INSERT INTO user_roles (user_id, role) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM user_roles WHERE user_id = $1 AND role = $2"
        };
        self.change_membership(sql, Some(user), None, role, now)
            .await
    }

    async fn change_membership(
        &self,
        sql: &str,
        user: Option<UserId>,
        account: Option<AccountId>,
        role: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let owner = user.or(account).unwrap_or_default();
        on_engine!(self, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            let changed = sqlx::query(sql)
                .bind(owner)
                .bind(role)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?
                .rows_affected()
                > 0;
            if changed {
                record_change!(tx, user, account, now);
            }
            tx.commit().await.map_err(unavailable)?;
            Ok(changed)
        })
    }

    pub async fn add_user(
        &self,
        account: AccountId,
        email: &str,
        password_hash: &str,
        roles: &[String],
        now: i64,
    ) -> Result<UserId, StoreError> {
        on_engine!(self, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO users (account_id, email, active, password_hash, tokens_not_before, \
                 created_at, changed_at) VALUES ($1, $2, TRUE, $3, 0, $4, $4) RETURNING id",
            )
            .bind(account)
            .bind(email)
            .bind(password_hash)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
            insert_pairs!(tx, "INSERT INTO user_roles (user_id, role) VALUES ($1, $2)", id, roles);
            record_change!(tx, Some(id), None::<i64>, now);
            tx.commit().await.map_err(unavailable)?;
            Ok(id)
        })
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let sql = format!("{USER_COLUMNS} WHERE u.email = $1");
        let row: Option<UserRow> = on_engine!(self, pool => sqlx::query_as(&sql)
            .bind(email)
            .fetch_optional(pool)
            .await)
        .map_err(unavailable)?;
        self.complete(row).await
    }

    pub async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let sql = format!("{USER_COLUMNS} WHERE u.id = $1");
        let row: Option<UserRow> = on_engine!(self, pool => sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(pool)
            .await)
        .map_err(unavailable)?;
        self.complete(row).await
    }

    /// Users, optionally of one account, by email.
    pub async fn users(&self, account: Option<AccountId>) -> Result<Vec<User>, StoreError> {
        let sql = format!("{USER_COLUMNS} WHERE $1 IS NULL OR u.account_id = $1 ORDER BY u.email");
        let rows: Vec<UserRow> = on_engine!(self, pool => sqlx::query_as(&sql)
            .bind(account)
            .fetch_all(pool)
            .await)
        .map_err(unavailable)?;
        let mut users = Vec::with_capacity(rows.len());
        for row in rows {
            users.extend(self.complete(Some(row)).await?);
        }
        Ok(users)
    }

    async fn complete(&self, row: Option<UserRow>) -> Result<Option<User>, StoreError> {
        let Some((
            id,
            account_id,
            account_name,
            email,
            active,
            hash,
            not_before,
            sessions_not_before,
            created,
            changed,
        )) = row
        else {
            return Ok(None);
        };
        Ok(Some(User {
            roles: self.user_roles(id).await?,
            account_roles: self.account_roles(account_id).await?,
            id,
            account_id,
            account_name,
            email,
            active,
            password_hash: Secret::new(hash),
            tokens_not_before: not_before,
            sessions_not_before,
            created_at: created,
            changed_at: changed,
        }))
    }

    /// Sets a new password hash; tokens issued before `now` stop working.
    pub async fn set_password(
        &self,
        user: UserId,
        password_hash: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.update_user(
            "UPDATE users SET password_hash = $1, tokens_not_before = $2, \
             sessions_not_before = $2, changed_at = $2 \
             WHERE id = $3",
            password_hash.to_owned(),
            user,
            now,
        )
        .await
    }

    /// Activates or deactivates a user; deactivation also revokes every token.
    pub async fn set_active(
        &self,
        user: UserId,
        active: bool,
        now: i64,
    ) -> Result<bool, StoreError> {
        let sql = if active {
            "UPDATE users SET active = TRUE, changed_at = $2 WHERE id = $3 AND $1 = $1"
        } else {
            "UPDATE users SET active = FALSE, tokens_not_before = $2, \
             sessions_not_before = $2, changed_at = $2 WHERE id = $3 AND $1 = $1"
        };
        self.update_user(sql, String::new(), user, now).await
    }

    /// Revokes every token of `user` issued before `now`.
    pub async fn revoke_tokens(&self, user: UserId, now: i64) -> Result<bool, StoreError> {
        self.update_user(
            "UPDATE users SET tokens_not_before = $2, changed_at = $2 WHERE id = $3 AND $1 = $1",
            String::new(),
            user,
            now,
        )
        .await
    }

    /// Ends every web-login session of `user` begun before `now`.
    pub async fn revoke_sessions(&self, user: UserId, now: i64) -> Result<bool, StoreError> {
        self.update_user(
            "UPDATE users SET sessions_not_before = $2, changed_at = $2 WHERE id = $3 AND $1 = $1",
            String::new(),
            user,
            now,
        )
        .await
    }

    /// The user's authenticator app, if one is enrolled: sealed secret, last step
    /// used, enrollment time.
    pub async fn totp(&self, user: UserId) -> Result<Option<TotpEnrollment>, StoreError> {
        let row: Option<(String, i64, i64)> = on_engine!(self, pool => sqlx::query_as(
            "SELECT sealed_secret, last_step, enrolled_at FROM totp_enrollments WHERE user_id = $1",
        )
        .bind(user)
        .fetch_optional(pool)
        .await)
        .map_err(unavailable)?;
        Ok(
            row.map(|(sealed_secret, last_step, enrolled_at)| TotpEnrollment {
                sealed_secret,
                last_step,
                enrolled_at,
            }),
        )
    }

    /// Enrolls an authenticator app with fresh recovery codes, replacing any earlier
    /// ones; `step` is the time step of the code that confirmed it (used up).
    pub async fn enroll_totp(
        &self,
        user: UserId,
        sealed_secret: &str,
        step: i64,
        recovery_hashes: &[String],
        now: i64,
    ) -> Result<(), StoreError> {
        on_engine!(self, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            for sql in [
                "DELETE FROM totp_enrollments WHERE user_id = $1",
                "DELETE FROM recovery_codes WHERE user_id = $1",
            ] {
                sqlx::query(sql).bind(user).execute(&mut *tx).await.map_err(unavailable)?;
            }
            sqlx::query(
                "INSERT INTO totp_enrollments (user_id, sealed_secret, last_step, enrolled_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(user)
            .bind(sealed_secret)
            .bind(step)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            insert_pairs!(tx, "INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)", user, recovery_hashes);
            record_change!(tx, Some(user), None::<i64>, now);
            tx.commit().await.map_err(unavailable)?;
            Ok(())
        })
    }

    /// Uses up TOTP time step `step`: true only if no later or equal step was used
    /// before (one atomic update, so two instances cannot both accept a code).
    pub async fn use_totp_step(&self, user: UserId, step: i64) -> Result<bool, StoreError> {
        on_engine!(self, pool => sqlx::query(
            "UPDATE totp_enrollments SET last_step = $2 WHERE user_id = $1 AND last_step < $2",
        )
        .bind(user)
        .bind(step)
        .execute(pool)
        .await
        .map(|done| done.rows_affected() > 0))
        .map_err(unavailable)
    }

    /// Uses up a recovery code by its hash: true only the first time.
    pub async fn use_recovery_code(
        &self,
        user: UserId,
        code_hash: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        on_engine!(self, pool => sqlx::query(
            "UPDATE recovery_codes SET used_at = $3 \
             WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
        )
        .bind(user)
        .bind(code_hash)
        .bind(now)
        .execute(pool)
        .await
        .map(|done| done.rows_affected() > 0))
        .map_err(unavailable)
    }

    /// How many recovery codes of the user are still unused.
    pub async fn recovery_codes_left(&self, user: UserId) -> Result<i64, StoreError> {
        let (count,): (i64,) = on_engine!(self, pool => sqlx::query_as(
            "SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
        )
        .bind(user)
        .fetch_one(pool)
        .await)
        .map_err(unavailable)?;
        Ok(count)
    }

    /// Removes the authenticator app and recovery codes and ends the user's sessions.
    pub async fn reset_second_factor(&self, user: UserId, now: i64) -> Result<bool, StoreError> {
        on_engine!(self, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            let mut removed = 0;
            for sql in [
                "DELETE FROM totp_enrollments WHERE user_id = $1",
                "DELETE FROM recovery_codes WHERE user_id = $1",
            ] {
                removed += sqlx::query(sql)
                    .bind(user)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?
                    .rows_affected();
            }
            sqlx::query("UPDATE users SET sessions_not_before = $1, changed_at = $1 WHERE id = $2")
                .bind(now)
                .bind(user)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            record_change!(tx, Some(user), None::<i64>, now);
            tx.commit().await.map_err(unavailable)?;
            Ok(removed > 0)
        })
    }

    /// Runs one `UPDATE users` with binds `$1` text, `$2` now, `$3` user id, and
    /// records the change.
    async fn update_user(
        &self,
        sql: &str,
        text: String,
        user: UserId,
        now: i64,
    ) -> Result<bool, StoreError> {
        on_engine!(self, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            let changed = sqlx::query(sql)
                .bind(text)
                .bind(now)
                .bind(user)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?
                .rows_affected()
                > 0;
            if changed {
                record_change!(tx, Some(user), None::<i64>, now);
            }
            tx.commit().await.map_err(unavailable)?;
            Ok(changed)
        })
    }

    /// Runs a policy resource query (`$1` is the key: bound as an integer when it is
    /// one, else as text) and returns the first row's two account ids: owner and
    /// consultancy (either may be NULL). `None`: no such resource.
    pub async fn resolve(
        &self,
        query: &str,
        key: &str,
    ) -> Result<Option<(Option<i64>, Option<i64>)>, StoreError> {
        let number = key.parse::<i64>().ok();
        on_engine!(self, pool => {
            let statement = sqlx::query_as::<_, (Option<i64>, Option<i64>)>(query);
            let statement = match number {
                Some(number) => statement.bind(number),
                None => statement.bind(key),
            };
            statement.fetch_optional(pool).await
        })
        .map_err(unavailable)
    }

    /// The latest-ending lockout in force at `now` among `keys`.
    pub async fn lockout(&self, keys: &[String], now: i64) -> Result<Option<Lockout>, StoreError> {
        if keys.is_empty() {
            return Ok(None);
        }
        let placeholders: Vec<String> = (2..keys.len() + 2).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT key, locked_until, reason, created_at FROM login_lockouts \
             WHERE locked_until > $1 AND key IN ({}) ORDER BY locked_until DESC LIMIT 1",
            placeholders.join(", ")
        );
        let row: Option<(String, i64, String, i64)> = on_engine!(self, pool => {
            let mut query = sqlx::query_as(&sql).bind(now);
            for key in keys {
                query = query.bind(key);
            }
            query.fetch_optional(pool).await
        })
        .map_err(unavailable)?;
        Ok(row.map(Lockout::from_row))
    }

    /// Locks `key` out until `until` (a later lockout of the same key replaces it).
    pub async fn lock_out(&self, lockout: &Lockout) -> Result<(), StoreError> {
        on_engine!(self, pool => sqlx::query(
            "INSERT INTO login_lockouts (key, locked_until, reason, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO UPDATE SET \
             locked_until = excluded.locked_until, reason = excluded.reason, \
             created_at = excluded.created_at",
        )
        .bind(&lockout.key)
        .bind(lockout.until)
        .bind(&lockout.reason)
        .bind(lockout.created)
        .execute(pool)
        .await
        .map(drop))
        .map_err(unavailable)?;
        // Expired lockouts are only history; keep the table small.
        on_engine!(self, pool => sqlx::query("DELETE FROM login_lockouts WHERE locked_until <= $1")
            .bind(lockout.created)
            .execute(pool)
            .await
            .map(drop))
        .map_err(unavailable)
    }

    /// Lockouts in force at `now`, the latest-ending first.
    pub async fn lockouts(&self, now: i64) -> Result<Vec<Lockout>, StoreError> {
        let rows: Vec<(String, i64, String, i64)> = on_engine!(self, pool => sqlx::query_as(
            "SELECT key, locked_until, reason, created_at FROM login_lockouts \
             WHERE locked_until > $1 ORDER BY locked_until DESC, key",
        )
        .bind(now)
        .fetch_all(pool)
        .await)
        .map_err(unavailable)?;
        Ok(rows.into_iter().map(Lockout::from_row).collect())
    }

    /// Lifts the lockout of `key` (every lockout with `None`); returns how many.
    pub async fn lift_lockouts(&self, key: Option<&str>) -> Result<u64, StoreError> {
        on_engine!(self, pool => match key {
            Some(key) => sqlx::query("DELETE FROM login_lockouts WHERE key = $1")
                .bind(key)
                .execute(pool)
                .await
                .map(|done| done.rows_affected()),
            None => sqlx::query("DELETE FROM login_lockouts")
                .execute(pool)
                .await
                .map(|done| done.rows_affected()),
        })
        .map_err(unavailable)
    }

    /// Changes after `seq`, oldest first, at most `limit`.
    pub async fn changes_since(&self, seq: i64, limit: i64) -> Result<Vec<Change>, StoreError> {
        let rows: Vec<(i64, Option<i64>, Option<i64>)> = on_engine!(self, pool => sqlx::query_as(
            "SELECT seq, user_id, account_id FROM directory_changes WHERE seq > $1 \
             ORDER BY seq LIMIT $2",
        )
        .bind(seq)
        .bind(limit)
        .fetch_all(pool)
        .await)
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|(seq, user, account)| Change { seq, user, account })
            .collect())
    }

    /// The newest change's sequence number (0 when there is none).
    pub async fn latest_change(&self) -> Result<i64, StoreError> {
        let (seq,): (Option<i64>,) = on_engine!(self, pool => sqlx::query_as(
            "SELECT MAX(seq) FROM directory_changes",
        )
        .fetch_one(pool)
        .await)
        .map_err(unavailable)?;
        Ok(seq.unwrap_or(0))
    }

    /// Stores a change made with an admin command until a gateway relays it.
    pub async fn record_admin_event(&self, event: &AdminEvent) -> Result<(), StoreError> {
        on_engine!(self, pool => sqlx::query(
            "INSERT INTO admin_events (at, event, detail, operator) VALUES ($1, $2, $3, $4)",
        )
        .bind(event.at)
        .bind(&event.event)
        .bind(&event.detail)
        .bind(&event.operator)
        .execute(pool)
        .await
        .map(drop))
        .map_err(unavailable)
    }

    /// Takes (deletes and returns) at most `limit` stored admin events, oldest first.
    /// Concurrent callers never get the same row: on PostgreSQL the second `DELETE`
    /// waits for the first and then finds the rows gone; SQLite runs one at a time.
    pub async fn take_admin_events(&self, limit: i64) -> Result<Vec<AdminEvent>, StoreError> {
        let mut rows: Vec<(i64, i64, String, String, String)> =
            on_engine!(self, pool => sqlx::query_as(
            "DELETE FROM admin_events WHERE id IN \
             (SELECT id FROM admin_events ORDER BY id LIMIT $1) \
             RETURNING id, at, event, detail, operator",
        )
        .bind(limit)
        .fetch_all(pool)
        .await)
            .map_err(unavailable)?;
        rows.sort_unstable_by_key(|row| row.0);
        Ok(rows
            .into_iter()
            .map(|(_, at, event, detail, operator)| AdminEvent {
                at,
                event,
                detail,
                operator,
            })
            .collect())
    }

    /// Every role name in use, user roles first, for typo hints.
    pub async fn roles_in_use(&self) -> Result<(Vec<String>, Vec<String>), StoreError> {
        let users: Vec<(String,)> = on_engine!(self, pool => sqlx::query_as(
            "SELECT DISTINCT role FROM user_roles ORDER BY role",
        )
        .fetch_all(pool)
        .await)
        .map_err(unavailable)?;
        let accounts: Vec<(String,)> = on_engine!(self, pool => sqlx::query_as(
            "SELECT DISTINCT role FROM account_roles ORDER BY role",
        )
        .fetch_all(pool)
        .await)
        .map_err(unavailable)?;
        Ok((
            users.into_iter().map(|(r,)| r).collect(),
            accounts.into_iter().map(|(r,)| r).collect(),
        ))
    }
}
