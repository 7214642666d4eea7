//! FlexMeasures' own PostgreSQL database, read only: users, accounts, their roles,
//! and (through policy resources) assets and sensors.
//!
//! Tables as FlexMeasures defines them: `fm_user` (id, email, password, active,
//! fs_uniquifier, account_id), `account` (id, name, consultancy_account_id), `role`
//! and `roles_users` (user roles), `account_role` and `roles_accounts` (account
//! roles). The gateway never writes here.

use std::time::Duration;

use super::{Database, StoreError};
use crate::secret::Secret;

/// A FlexMeasures user with what policies need.
#[derive(Debug, Clone)]
pub struct FlexMeasuresUser {
    pub id: i64,
    pub account_id: i64,
    pub email: String,
    pub active: bool,
    /// bcrypt or argon2 of Flask-Security's HMAC pre-hash.
    pub password_hash: Secret<String>,
    /// `fs_uniquifier`: what tokens name; FlexMeasures changes it to end them.
    pub uniquifier: String,
    /// The account's consultancy account, if it has one.
    pub consultancy: Option<i64>,
    pub roles: Vec<String>,
    pub account_roles: Vec<String>,
}

/// FlexMeasures' database.
#[derive(Clone)]
pub struct FlexMeasuresDatabase {
    database: Database,
}

type UserRow = (
    i64,
    i64,
    String,
    bool,
    String,
    String,
    Option<i64>,
    Vec<String>,
    Vec<String>,
);

/// A user with their roles and their account's roles, in one round trip.
const USER: &str = "SELECT u.id::bigint, u.account_id::bigint, u.email, u.active IS TRUE, \
     u.password, u.fs_uniquifier, a.consultancy_account_id::bigint, \
     ARRAY(SELECT r.name::text FROM role r JOIN roles_users ru ON ru.role_id = r.id \
           WHERE ru.user_id = u.id ORDER BY r.name), \
     ARRAY(SELECT r.name::text FROM account_role r JOIN roles_accounts ra ON ra.role_id = r.id \
           WHERE ra.account_id = u.account_id ORDER BY r.name) \
     FROM fm_user u JOIN account a ON a.id = u.account_id";

fn unavailable(error: sqlx::Error) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

impl FlexMeasuresDatabase {
    /// A lazy pool on `postgres://…`, so the gateway starts while it is down.
    pub fn connect(url: &str, max_connections: u32, timeout: Duration) -> Result<Self, StoreError> {
        match Database::connect(url, max_connections, timeout)? {
            database @ Database::Postgres(_) => Ok(Self { database }),
            Database::Sqlite(_) => Err(StoreError::BadUrl(
                "a FlexMeasures database is PostgreSQL".into(),
            )),
        }
    }

    /// For policy resources and readiness.
    pub fn database(&self) -> &Database {
        &self.database
    }

    fn pool(&self) -> Result<&sqlx::PgPool, StoreError> {
        match &self.database {
            Database::Postgres(pool) => Ok(pool),
            Database::Sqlite(_) => Err(StoreError::BadUrl("not PostgreSQL".into())),
        }
    }

    /// The user a token names.
    pub async fn user_by_uniquifier(
        &self,
        uniquifier: &str,
    ) -> Result<Option<FlexMeasuresUser>, StoreError> {
        let row: Option<UserRow> = sqlx::query_as(&format!("{USER} WHERE u.fs_uniquifier = $1"))
            .bind(uniquifier)
            .fetch_optional(self.pool()?)
            .await
            .map_err(unavailable)?;
        Ok(Self::complete(row))
    }

    /// The user logging in (emails compared case-insensitively, as FlexMeasures does).
    pub async fn user_by_email(&self, email: &str) -> Result<Option<FlexMeasuresUser>, StoreError> {
        let row: Option<UserRow> =
            sqlx::query_as(&format!("{USER} WHERE lower(u.email) = lower($1)"))
                .bind(email.trim())
                .fetch_optional(self.pool()?)
                .await
                .map_err(unavailable)?;
        Ok(Self::complete(row))
    }

    fn complete(row: Option<UserRow>) -> Option<FlexMeasuresUser> {
        let (
            id,
            account_id,
            email,
            active,
            password,
            uniquifier,
            consultancy,
            roles,
            account_roles,
        ) = row?;
        Some(FlexMeasuresUser {
            id,
            account_id,
            email,
            active,
            password_hash: Secret::new(password),
            uniquifier,
            consultancy,
            roles,
            account_roles,
        })
    }
}
