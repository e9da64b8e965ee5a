//! Black-box tests: each spawns the real server on port 0 with a fresh database (SQLite by
//! default, PostgreSQL when `PARLEY_TEST_DATABASE_URL` is set) and talks to it like a client.
mod accounts;
mod apikeys;
mod bots;
mod browser;
mod callbacks;
mod conversations;
mod deliveries;
mod delivery_slots;
mod flows;
mod helpers;
mod lifecycle;
mod limits;
mod metrics;
mod pauses;
mod races;
mod replies;
mod results;
mod scaleout;
mod schema;
mod secrets;
mod sessions;
mod stats;
mod transport;
mod webhooks;
mod websocket;
mod widget;
