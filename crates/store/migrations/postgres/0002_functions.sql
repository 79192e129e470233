-- The function library: reusable named actions. A template that calls one gets a copy
-- of it when the template is stored, so changing a function never changes running tasks.
CREATE TABLE functions (
    name       TEXT COLLATE "C" PRIMARY KEY,
    body       TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
