//! What the listing commands print: `user list`, `session list` and `chat
//! list`, as tables. Text that came from elsewhere (ids, names) is shown
//! with control characters escaped, as in the log. A name, free text of any
//! length, is the last column, as `ls -l` and `ps` put theirs: a long one
//! then lengthens its own line only, not every line of the table.

use super::table::{self, Align};
use crate::{db, logging, utc};

/// `user list`'s output. Ids and names are shown with control characters
/// escaped, as in the log.
pub(super) fn users_table(users: &[db::UserInfo]) -> String {
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                logging::printable(&u.id).into_owned(),
                u.chats.to_string(),
                u.active_sessions.to_string(),
                logging::printable(u.name.as_deref().unwrap_or("-")).into_owned(),
            ]
        })
        .collect();
    table::render(
        &[
            ("id", Align::Left),
            ("chats", Align::Right),
            ("active sessions", Align::Right),
            ("name", Align::Left),
        ],
        &rows,
    )
}

/// `session list`'s output, at `now`.
pub(super) fn sessions_table(sessions: &[db::SessionInfo], now: i64) -> String {
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            let state = if s.expires_at > now {
                "active"
            } else {
                "expired"
            };
            vec![
                s.hash_prefix.clone(),
                utc::date_time(s.created_at),
                utc::date_time(s.expires_at),
                state.to_owned(),
            ]
        })
        .collect();
    table::render(
        &[
            ("hash", Align::Left),
            ("created (UTC)", Align::Left),
            ("expires (UTC)", Align::Left),
            ("state", Align::Left),
        ],
        &rows,
    )
}

/// `chat list`'s output. Names are shown as the log shows text a client
/// sent, with control characters escaped.
pub(super) fn chats_table(chats: &[db::ChatInfo]) -> String {
    let rows: Vec<Vec<String>> = chats
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                logging::printable(&c.model).into_owned(),
                c.messages.to_string(),
                c.files.to_string(),
                if c.shared { "yes" } else { "no" }.to_owned(),
                utc::date_time(c.updated_at),
                logging::printable(&c.name).into_owned(),
            ]
        })
        .collect();
    table::render(
        &[
            ("id", Align::Right),
            ("model", Align::Left),
            ("messages", Align::Right),
            ("files", Align::Right),
            ("shared", Align::Left),
            ("updated (UTC)", Align::Left),
            ("name", Align::Left),
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_table_escapes_control_characters() {
        let user = |id: &str, name: Option<&str>, chats, active_sessions| db::UserInfo {
            id: id.to_owned(),
            name: name.map(str::to_owned),
            chats,
            active_sessions,
        };
        let table = users_table(&[
            user("alice", Some("Alice Liddell"), 12, 1),
            user("b\x1b[2Jb", None, 0, 0),
        ]);
        assert_eq!(
            table,
            "id         chats  active sessions  name\n\
             alice         12                1  Alice Liddell\n\
             b\\x1b[2Jb      0                0  -\n"
        );
    }

    #[test]
    fn a_long_chat_name_lengthens_only_its_own_line() {
        let chat = |id, name: &str| db::ChatInfo {
            id,
            name: name.to_owned(),
            model: "gpt-4o".to_owned(),
            messages: 3,
            files: 0,
            shared: false,
            updated_at: 0,
        };
        let long = "a chat named after its whole first question, ".repeat(20);
        let table = chats_table(&[chat(1, long.trim_end()), chat(2, "Trip")]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines,
            [
                "id  model   messages  files  shared  updated (UTC)        name",
                &format!(
                    " 1  gpt-4o         3      0  no      1970-01-01 00:00:00  {}",
                    long.trim_end()
                ),
                " 2  gpt-4o         3      0  no      1970-01-01 00:00:00  Trip",
            ]
        );
    }
}
