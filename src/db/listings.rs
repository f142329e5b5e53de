//! What the listing commands show, read on any connection: a pooled one,
//! or a read-only one on a copy that `backup` wrote, which must not be
//! changed by being looked at (see [`super::open_read_only`]).

use rusqlite::{Connection, Row};

use super::{Error, Result, user_exists};

/// What may be shown about a stored session: never the token, which is not
/// stored, and only a short prefix of its hash, to tell sessions apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub hash_prefix: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// A user, with how many chats and unexpired sessions it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub id: String,
    pub name: Option<String>,
    pub chats: i64,
    pub active_sessions: i64,
}

/// A chat, with how much hangs off it: what `chat list` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatInfo {
    pub id: i64,
    pub name: String,
    pub model: String,
    pub messages: i64,
    pub files: i64,
    pub shared: bool,
    pub updated_at: i64,
}

/// Every user, by id, with counts of chats and of sessions that have not
/// expired at `now`.
pub fn users(conn: &Connection, now: i64) -> Result<Vec<UserInfo>> {
    let mut stmt = conn.prepare(
        "SELECT id, name,
                (SELECT count(*) FROM chats WHERE user_id = users.id),
                (SELECT count(*) FROM sessions
                 WHERE user_id = users.id AND expires_at > ?1)
         FROM users ORDER BY id",
    )?;
    let rows = stmt.query_map([now], |r| {
        Ok(UserInfo {
            id: r.get(0)?,
            name: r.get(1)?,
            chats: r.get(2)?,
            active_sessions: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The user's sessions, newest first; fails with [`Error::UnknownUser`] if
/// there is no such user.
pub fn sessions(conn: &Connection, user_id: &str) -> Result<Vec<SessionInfo>> {
    of_user(
        conn,
        user_id,
        "SELECT lower(hex(substr(token_hash, 1, 4))), created_at, expires_at
         FROM sessions WHERE user_id = ?1 ORDER BY created_at DESC, token_hash",
        |r| {
            Ok(SessionInfo {
                hash_prefix: r.get(0)?,
                created_at: r.get(1)?,
                expires_at: r.get(2)?,
            })
        },
    )
}

/// The user's chats, oldest first, with their numbers of messages and files
/// and whether they are shared. Fails with [`Error::UnknownUser`].
pub fn chats(conn: &Connection, user_id: &str) -> Result<Vec<ChatInfo>> {
    of_user(
        conn,
        user_id,
        "SELECT id, name, model, updated_at,
                (SELECT count(*) FROM messages WHERE chat_id = chats.id),
                (SELECT count(*) FROM chat_files WHERE chat_id = chats.id),
                EXISTS (SELECT 1 FROM chat_shares WHERE chat_id = chats.id)
         FROM chats WHERE user_id = ?1 ORDER BY id",
        |r| {
            Ok(ChatInfo {
                id: r.get(0)?,
                name: r.get(1)?,
                model: r.get(2)?,
                updated_at: r.get(3)?,
                messages: r.get(4)?,
                files: r.get(5)?,
                shared: r.get(6)?,
            })
        },
    )
}

/// The rows of `sql`, whose `?1` is the user's id, each made by `row`; fails
/// with [`Error::UnknownUser`] if there is no such user. One read
/// transaction, so that the check and the rows agree.
fn of_user<T>(
    conn: &Connection,
    user_id: &str,
    sql: &str,
    row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    let tx = conn.unchecked_transaction()?;
    if !user_exists(&tx, user_id)? {
        return Err(Error::UnknownUser(user_id.to_owned()));
    }
    let mut stmt = tx.prepare(sql)?;
    let rows = stmt.query_map([user_id], row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
