//! Demo data for `serve --demo`: a user with a few chats that exercise every
//! table (messages, an attachment, a protected share with a whitelist entry).
//!
//! Seeding is idempotent: the demo users are created once, and each demo chat
//! that is missing (never seeded, or deleted during a demo) is created again,
//! with a new id, so that every demo starts with the same chats.

use rusqlite::OptionalExtension;

use crate::db::{self, Actor, Database, NewFile};

/// The demo user's id.
pub const DEMO_USER: &str = "demo";
/// A second user, so that the share's whitelist has someone on it.
const DEMO_FRIEND: &str = "demo-friend";

struct DemoChat {
    name: &'static str,
    model: &'static str,
    messages: &'static [(Actor, &'static str)],
    file: Option<(&'static str, &'static str, &'static [u8])>,
    shared: bool,
}

const CHATS: &[DemoChat] = &[
    DemoChat {
        name: "Welcome to Neptun",
        model: "qwen2.5-coder:7b",
        messages: &[
            (Actor::User, "What can you help me with?"),
            (
                Actor::Assistant,
                "Code review, debugging, Dockerfiles, and explaining error messages.",
            ),
        ],
        file: Some((
            "notes.txt",
            "text/plain",
            b"Remember: deleting a chat cannot be undone.\n",
        )),
        shared: true,
    },
    DemoChat {
        name: "Rust ownership questions",
        model: "llama3.1:8b",
        messages: &[
            (Actor::User, "Why can't I borrow this as mutable twice?"),
            (
                Actor::Assistant,
                "Two live &mut borrows could alias; the borrow checker forbids it.",
            ),
            (Actor::User, "Thanks!"),
        ],
        file: None,
        shared: false,
    },
    DemoChat {
        name: "Dockerfile review",
        model: "qwen2.5-coder:7b",
        messages: &[(Actor::User, "Can you make this image smaller?")],
        file: Some((
            "Dockerfile",
            "text/plain",
            b"FROM rust:1 AS build\nRUN cargo build --release\n",
        )),
        shared: false,
    },
];

/// Ensures the demo users and chats exist; returns the demo chats' ids, in
/// ascending order (a re-created chat has the highest), as `chat list`
/// shows them.
pub fn seed(db: &Database) -> db::Result<Vec<i64>> {
    db.write(|tx| {
        for (id, name) in [(DEMO_USER, "Demo User"), (DEMO_FRIEND, "Demo Friend")] {
            match db::insert_user(tx, id, Some(name)) {
                Ok(()) | Err(db::Error::UserExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let mut ids = Vec::with_capacity(CHATS.len());
        for chat in CHATS {
            let existing: Option<i64> = tx
                .query_row(
                    "SELECT id FROM chats WHERE user_id = ?1 AND name = ?2",
                    [DEMO_USER, chat.name],
                    |r| r.get(0),
                )
                .optional()?;
            ids.push(match existing {
                Some(id) => id,
                None => insert_chat(tx, chat)?,
            });
        }
        ids.sort_unstable();
        Ok(ids)
    })
}

fn insert_chat(tx: &rusqlite::Connection, chat: &DemoChat) -> db::Result<i64> {
    let chat_id = db::insert_chat(tx, DEMO_USER, chat.name, chat.model)?;
    let mut first_message = None;
    for (actor, text) in chat.messages {
        let id = db::insert_message(tx, chat_id, *actor, text)?;
        first_message.get_or_insert(id);
    }
    if let Some((name, mime_type, content)) = chat.file {
        db::insert_file(
            tx,
            &NewFile {
                chat_id,
                message_id: first_message,
                name,
                mime_type,
                content,
            },
        )?;
    }
    if chat.shared {
        let share = db::insert_share(tx, chat_id, &format!("demo-share-{chat_id}"), true)?;
        db::insert_share_whitelist_entry(tx, share, DEMO_FRIEND)?;
    }
    Ok(chat_id)
}
