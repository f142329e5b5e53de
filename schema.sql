-- neptun-local schema, version 1 (PRAGMA user_version).
--
-- Mirrors the upstream Neptun chat data model: a chat and everything that
-- hangs off it. Deleting a chat must take all of it along, so every child row
-- points at its parent with ON DELETE CASCADE, and every foreign-key child
-- column has an index (without one, each chat delete scans the whole child
-- table). Times are Unix seconds.
--
-- Applied once, inside one transaction, by db::migrate. `auto_vacuum` and
-- `journal_mode` are set by the migration code before this runs, because
-- auto_vacuum only takes effect before the first table is created.

CREATE TABLE users (
    id         TEXT PRIMARY KEY NOT NULL CHECK (length(id) BETWEEN 1 AND 256),
    name       TEXT,
    created_at INTEGER NOT NULL DEFAULT (unixepoch())
);

-- Only a SHA-256 of the token is kept: a copy of the database file does not
-- yield a usable session.
CREATE TABLE sessions (
    token_hash BLOB PRIMARY KEY NOT NULL CHECK (length(token_hash) = 32),
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL DEFAULT (unixepoch()),
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_user_id ON sessions (user_id);

-- AUTOINCREMENT so that the id of a deleted chat is never handed out again:
-- a client that retries an old DELETE must get 404, not delete a newer chat.
CREATE TABLE chats (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    model      TEXT NOT NULL,
    created_at INTEGER NOT NULL DEFAULT (unixepoch()),
    updated_at INTEGER NOT NULL DEFAULT (unixepoch())
);
CREATE INDEX chats_user_id ON chats (user_id);

CREATE TABLE messages (
    id         INTEGER PRIMARY KEY,
    chat_id    INTEGER NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    actor      TEXT NOT NULL CHECK (actor IN ('user', 'assistant')),
    message    TEXT NOT NULL,
    created_at INTEGER NOT NULL DEFAULT (unixepoch())
);
CREATE INDEX messages_chat_id ON messages (chat_id);

-- Attachments live in the database, so deleting the chat deletes them too.
CREATE TABLE chat_files (
    id         INTEGER PRIMARY KEY,
    chat_id    INTEGER NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    message_id INTEGER REFERENCES messages (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    mime_type  TEXT NOT NULL,
    content    BLOB NOT NULL,
    created_at INTEGER NOT NULL DEFAULT (unixepoch())
);
CREATE INDEX chat_files_chat_id ON chat_files (chat_id);
CREATE INDEX chat_files_message_id ON chat_files (message_id);

-- At most one share per chat; the UNIQUE index also serves the foreign key.
CREATE TABLE chat_shares (
    id           INTEGER PRIMARY KEY,
    chat_id      INTEGER NOT NULL UNIQUE REFERENCES chats (id) ON DELETE CASCADE,
    share_uuid   TEXT NOT NULL UNIQUE,
    is_protected INTEGER NOT NULL DEFAULT 0 CHECK (is_protected IN (0, 1)),
    created_at   INTEGER NOT NULL DEFAULT (unixepoch())
);

-- The users a protected share is visible to. The UNIQUE index leads with
-- share_id and so also serves that foreign key.
CREATE TABLE chat_share_whitelist_entries (
    id         INTEGER PRIMARY KEY,
    share_id   INTEGER NOT NULL REFERENCES chat_shares (id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL DEFAULT (unixepoch()),
    UNIQUE (share_id, user_id)
);
CREATE INDEX chat_share_whitelist_entries_user_id ON chat_share_whitelist_entries (user_id);
