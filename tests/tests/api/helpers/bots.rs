//! Bots, flows and webhooks: one helper per operation, and the flows the tests publish.

use super::*;

/// Selection of a bot's fields used by the tests.
pub const BOT_FIELDS: &str = "id name revision account { id } flow { startBlockId blocks { id kind text questionType saveAnswerTo choices { label value next } webhookId async conditions { variable operator value next } next } } flowWarnings { blockId field message } published { version flow { startBlockId } } versions { version publishedAt }";

/// Selection of a webhook's fields used by the tests.
pub const WEBHOOK_FIELDS: &str = "id name url headers { name value } signingSecret createdAt";

/// The seed's lead-generation flow: a greeting, an email question saved to `email`, a phone
/// question saved to `phone_number`, a webhook block, the end.
pub fn seed_flow(webhook_id: &str, is_async: bool) -> Value {
    json!({
        "startBlockId": "hello",
        "blocks": [
            { "id": "hello", "kind": "MESSAGE", "text": "Hi! Let's get in touch.", "next": "ask_email" },
            { "id": "ask_email", "kind": "QUESTION", "text": "What is your email?", "questionType": "EMAIL", "saveAnswerTo": "email", "next": "ask_phone" },
            { "id": "ask_phone", "kind": "QUESTION", "text": "And your phone number?", "questionType": "PHONE", "saveAnswerTo": "phone_number", "next": "hook" },
            { "id": "hook", "kind": "WEBHOOK", "webhookId": webhook_id, "async": is_async, "next": "bye" },
            { "id": "bye", "kind": "END" }
        ]
    })
}

impl TestApp {
    pub async fn create_bot(&self, token: &str, account_id: &str, name: &str) -> Value {
        self.gql(token, &format!("mutation($a: ID!, $n: String!) {{ createBot(accountId: $a, name: $n) {{ {BOT_FIELDS} }} }}"), json!({ "a": account_id, "n": name }))
            .await
    }

    /// Creates a bot and returns its id.
    pub async fn new_bot(&self, user: &TestUser) -> String {
        let body = self
            .create_bot(&user.token, &user.account_id, "Lead bot")
            .await;
        body["data"]["createBot"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("createBot failed: {body}"))
            .to_owned()
    }

    pub async fn rename_bot(&self, token: &str, id: &str, name: &str) -> Value {
        self.gql(
            token,
            "mutation($id: ID!, $n: String!) { renameBot(id: $id, name: $n) { id name } }",
            json!({ "id": id, "n": name }),
        )
        .await
    }

    pub async fn delete_bot(&self, token: &str, id: &str) -> Value {
        self.gql(
            token,
            "mutation($id: ID!) { deleteBot(id: $id) }",
            json!({ "id": id }),
        )
        .await
    }

    pub async fn bot(&self, token: &str, id: &str) -> Value {
        self.gql(
            token,
            &format!("query($id: ID!) {{ bot(id: $id) {{ {BOT_FIELDS} }} }}"),
            json!({ "id": id }),
        )
        .await
    }

    pub async fn save_flow(
        &self,
        token: &str,
        bot_id: &str,
        flow: Value,
        expected_revision: Option<i64>,
    ) -> Value {
        self.gql(
            token,
            &format!("mutation($b: ID!, $f: FlowInput!, $r: Int) {{ saveFlow(botId: $b, flow: $f, expectedRevision: $r) {{ {BOT_FIELDS} }} }}"),
            json!({ "b": bot_id, "f": flow, "r": expected_revision }),
        )
        .await
    }

    pub async fn publish_bot(&self, token: &str, bot_id: &str) -> Value {
        self.gql(
            token,
            "mutation($b: ID!) { publishBot(botId: $b) { version publishedAt flow { startBlockId blocks { id text } } } }",
            json!({ "b": bot_id }),
        )
        .await
    }

    pub async fn create_webhook(&self, token: &str, account_id: &str, input: Value) -> Value {
        self.gql(
            token,
            &format!("mutation($a: ID!, $i: WebhookInput!) {{ createWebhook(accountId: $a, input: $i) {{ {WEBHOOK_FIELDS} }} }}"),
            json!({ "a": account_id, "i": input }),
        )
        .await
    }

    /// A receiver whose `/hook` answers 200 with `body`, and a webhook of `user` pointing at
    /// it (its id). The receiver lives as long as the value returned.
    pub async fn answering_hook(
        &self,
        user: &TestUser,
        body: Value,
    ) -> (wiremock::MockServer, String) {
        let hook = wiremock::MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::method("POST"))
            .and(wiremock::matchers::path("/hook"))
            .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(body))
            .mount(&hook)
            .await;
        let webhook = self
            .new_webhook(user, &format!("{}/hook", hook.uri()))
            .await;
        (hook, webhook)
    }

    /// Creates a webhook pointing at `url` and returns its id.
    pub async fn new_webhook(&self, user: &TestUser, url: &str) -> String {
        let body = self.create_webhook(&user.token, &user.account_id, json!({ "name": "CRM", "url": url, "headers": [{ "name": "X-Api-Key", "value": "k-123" }] })).await;
        body["data"]["createWebhook"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("createWebhook failed: {body}"))
            .to_owned()
    }

    /// A webhook "Alerts" of `user`'s account that takes the lifecycle events `event_types`,
    /// posting to `receiver`'s `/hook`; its id.
    pub async fn new_alerts_webhook(
        &self,
        user: &TestUser,
        receiver: &wiremock::MockServer,
        event_types: &[&str],
    ) -> String {
        let body = self
            .create_webhook(
                &user.token,
                &user.account_id,
                json!({ "name": "Alerts", "url": format!("{}/hook", receiver.uri()),
                        "eventTypes": event_types }),
            )
            .await;
        assert_ok(&body);
        body["data"]["createWebhook"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("createWebhook failed: {body}"))
            .to_owned()
    }

    pub async fn update_webhook(&self, token: &str, id: &str, input: Value) -> Value {
        self.gql(
            token,
            &format!("mutation($id: ID!, $i: WebhookInput!) {{ updateWebhook(id: $id, input: $i) {{ {WEBHOOK_FIELDS} }} }}"),
            json!({ "id": id, "i": input }),
        )
        .await
    }

    pub async fn delete_webhook(&self, token: &str, id: &str) -> Value {
        self.gql(
            token,
            "mutation($id: ID!) { deleteWebhook(id: $id) }",
            json!({ "id": id }),
        )
        .await
    }

    pub async fn rotate_webhook_secret(&self, token: &str, id: &str) -> Value {
        self.gql(
            token,
            &format!(
                "mutation($id: ID!) {{ rotateWebhookSecret(id: $id) {{ {WEBHOOK_FIELDS} }} }}"
            ),
            json!({ "id": id }),
        )
        .await
    }

    pub async fn webhook(&self, token: &str, id: &str) -> Value {
        self.gql(
            token,
            &format!("query($id: ID!) {{ webhook(id: $id) {{ {WEBHOOK_FIELDS} }} }}"),
            json!({ "id": id }),
        )
        .await
    }

    /// A new bot of `user`'s with `flow` saved and published.
    pub async fn published_bot(&self, user: &TestUser, flow: Value) -> String {
        let bot = self.new_bot(user).await;
        assert_ok(&self.save_flow(&user.token, &bot, flow, None).await);
        assert_ok(&self.publish_bot(&user.token, &bot).await);
        bot
    }

    /// A conversation as its team sees it (`conversation` with events), and its stored
    /// events' `seq`s and texts, in order.
    pub async fn stored_conversation(
        &self,
        user: &TestUser,
        conversation_id: &str,
    ) -> (Value, Vec<i64>, Vec<String>) {
        let seen = self
            .conversation(Some(&user.token), conversation_id, None)
            .await;
        assert_ok(&seen);
        let conv = seen["data"]["conversation"].clone();
        let events = conv["events"].as_array().cloned().unwrap_or_default();
        let seqs = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
        let texts = events
            .iter()
            .filter_map(|e| e["text"].as_str().map(str::to_owned))
            .collect();
        (conv, seqs, texts)
    }

    /// A bot with the seed flow saved and published, calling a new webhook at `url`.
    pub async fn published_seed_bot(
        &self,
        user: &TestUser,
        url: &str,
        is_async: bool,
    ) -> (String, String) {
        let webhook = self.new_webhook(user, url).await;
        let bot = self.new_bot(user).await;
        assert_ok(
            &self
                .save_flow(&user.token, &bot, seed_flow(&webhook, is_async), None)
                .await,
        );
        assert_ok(&self.publish_bot(&user.token, &bot).await);
        (bot, webhook)
    }
}

/// The `extensions.problems` of a rejected flow, as (blockId, field) pairs.
pub fn problems(body: &Value) -> Vec<(Option<String>, String)> {
    body["errors"][0]["extensions"]["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems in {body}"))
        .iter()
        .map(|p| {
            (
                p["blockId"].as_str().map(str::to_owned),
                p["field"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}
