//! Rows to store. The `insert_*` functions
//! are the building blocks of the demo data, the CLI, the bench and tests.

use rusqlite::{Connection, ErrorCode, params};

use super::{Error, Result};

/// What went with a removed user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedUser {
    pub chats: i64,
    pub sessions: i64,
}

/// A session to store. Times are Unix seconds.
pub struct NewSession<'a> {
    pub token_hash: [u8; 32],
    pub user_id: &'a str,
    pub created_at: i64,
    pub expires_at: i64,
}

// The insert_* functions below take a plain connection so that callers can
// group many of them into one transaction with `Database::write` (seeding a
// thousand rows with one fsync instead of a thousand).

/// Inserts a user; fails with [`Error::UserExists`] if the id is taken.
pub fn insert_user(conn: &Connection, id: &str, name: Option<&str>) -> Result<()> {
    match conn.execute(
        "INSERT INTO users (id, name) VALUES (?1, ?2)",
        params![id, name],
    ) {
        Ok(_) => Ok(()),
        Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
            Err(Error::UserExists(id.to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Inserts a session; fails with [`Error::UnknownUser`] if the user does not exist.
pub fn insert_session(conn: &Connection, s: &NewSession) -> Result<()> {
    let inserted = conn.execute(
        "INSERT INTO sessions (token_hash, user_id, created_at, expires_at)
         SELECT ?1, id, ?3, ?4 FROM users WHERE id = ?2",
        params![&s.token_hash[..], s.user_id, s.created_at, s.expires_at],
    )?;
    if inserted == 1 {
        Ok(())
    } else {
        Err(Error::UnknownUser(s.user_id.to_owned()))
    }
}

/// Inserts a chat and returns its id.
pub fn insert_chat(conn: &Connection, user_id: &str, name: &str, model: &str) -> Result<i64> {
    conn.prepare_cached("INSERT INTO chats (user_id, name, model) VALUES (?1, ?2, ?3)")?
        .execute(params![user_id, name, model])?;
    Ok(conn.last_insert_rowid())
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    User,
    Assistant,
}

impl Actor {
    fn as_str(self) -> &'static str {
        match self {
            Actor::User => "user",
            Actor::Assistant => "assistant",
        }
    }
}

/// Inserts a message into a chat and returns its id.
pub fn insert_message(conn: &Connection, chat_id: i64, actor: Actor, text: &str) -> Result<i64> {
    conn.prepare_cached("INSERT INTO messages (chat_id, actor, message) VALUES (?1, ?2, ?3)")?
        .execute(params![chat_id, actor.as_str(), text])?;
    Ok(conn.last_insert_rowid())
}

/// An attachment to store with a chat (and optionally one of its messages).
pub struct NewFile<'a> {
    pub chat_id: i64,
    pub message_id: Option<i64>,
    pub name: &'a str,
    pub mime_type: &'a str,
    pub content: &'a [u8],
}

/// Inserts a file and returns its id.
pub fn insert_file(conn: &Connection, f: &NewFile) -> Result<i64> {
    conn.prepare_cached(
        "INSERT INTO chat_files (chat_id, message_id, name, mime_type, content)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        f.chat_id,
        f.message_id,
        f.name,
        f.mime_type,
        f.content
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Shares a chat and returns the share's id.
pub fn insert_share(
    conn: &Connection,
    chat_id: i64,
    share_uuid: &str,
    is_protected: bool,
) -> Result<i64> {
    conn.prepare_cached(
        "INSERT INTO chat_shares (chat_id, share_uuid, is_protected) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![chat_id, share_uuid, is_protected])?;
    Ok(conn.last_insert_rowid())
}

/// Lets a user see a protected share.
pub fn insert_share_whitelist_entry(conn: &Connection, share_id: i64, user_id: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO chat_share_whitelist_entries (share_id, user_id) VALUES (?1, ?2)",
    )?
    .execute(params![share_id, user_id])?;
    Ok(())
}
