-- API tokens: each holds scopes; only the SHA-256 of the secret is kept.
CREATE TABLE api_tokens (
    id           TEXT COLLATE "C" PRIMARY KEY,
    hash         TEXT COLLATE "C" NOT NULL UNIQUE,   -- hex SHA-256 of the token
    description  TEXT NOT NULL,
    scopes       TEXT NOT NULL,                      -- JSON array of scope strings
    user_name    TEXT,                               -- who the token acts as, when set
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,                    -- unix ms
    expires_at   BIGINT,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
