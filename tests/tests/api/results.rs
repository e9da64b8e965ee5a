//! Results: `Bot.resultFields`, the CSV export, and `Bot.conversations` by time.
use std::collections::HashMap;

use serde_json::{Value, json};

use crate::{apikeys::new_api_key, helpers::*};

fn two_questions(extra: bool) -> Value {
    let mut blocks = vec![
        json!({ "id": "ask_name", "kind": "QUESTION", "text": "Name?", "saveAnswerTo": "name", "next": "ask_comment" }),
        json!({ "id": "ask_comment", "kind": "QUESTION", "text": "Comment?", "saveAnswerTo": "comment", "next": if extra { "ask_plan" } else { "bye" } }),
        json!({ "id": "bye", "kind": "END" }),
    ];
    if extra {
        blocks.insert(0, json!({ "id": "ask_plan", "kind": "QUESTION", "text": "Plan?", "questionType": "CHOICE", "choices": [{ "label": "Pro" }, { "label": "Free" }], "saveAnswerTo": "plan", "next": "bye" }));
    }
    json!({ "startBlockId": "ask_name", "blocks": blocks })
}

async fn result_fields(app: &TestApp, token: &str, bot: &str) -> Value {
    let body = app
        .gql(
            token,
            "query($b: ID!) { bot(id: $b) { resultFields } }",
            json!({ "b": bot }),
        )
        .await;
    assert_ok(&body);
    body["data"]["bot"]["resultFields"].clone()
}

async fn export(app: &TestApp, token: Option<&str>, bot: &str, query: &str) -> reqwest::Response {
    let mut req = app
        .client
        .get(format!("{}/bots/{bot}/results.csv{query}", app.addr));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("request sent")
}

/// The export parsed by the `csv` crate: header, and rows by conversation id.
async fn parsed(resp: reqwest::Response) -> (Vec<String>, HashMap<String, Vec<String>>) {
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap_or_default(),
        "text/csv; charset=utf-8"
    );
    let bytes = resp.bytes().await.expect("body");
    let mut reader = csv::Reader::from_reader(bytes.as_ref());
    let header: Vec<String> = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_owned)
        .collect();
    let mut rows = HashMap::new();
    for record in reader.records() {
        let record = record.expect("a valid record");
        assert_eq!(record.len(), header.len(), "{record:?}");
        let cells: Vec<String> = record.iter().map(str::to_owned).collect();
        rows.insert(cells[0].clone(), cells);
    }
    (header, rows)
}

async fn answered(app: &TestApp, bot: &str, answers: &[&str]) -> String {
    let (id, token) = app.new_conversation(bot).await;
    for a in answers {
        assert_ok(&app.send_answer(&id, &token, a).await);
    }
    id
}

#[tokio::test]
async fn awkward_answers_survive_the_csv_round_trip() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let stranger = app.new_user().await;
    let bot = app.new_bot(&owner).await;
    assert_ok(
        &app.save_flow(&owner.token, &bot, two_questions(false), None)
            .await,
    );
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    assert_eq!(
        result_fields(&app, &owner.token, &bot).await,
        json!(["name", "comment"])
    );

    let comma = answered(&app, &bot, &["Doe, Jane", "She said \"hi\"\nand left"]).await;
    let emoji = answered(
        &app,
        &bot,
        &["Zoë 🙂 李", "=HYPERLINK(\"http://evil.example\",\"x\")"],
    )
    .await;
    let signs = answered(&app, &bot, &["@admin", "-12.5"]).await;
    let active = answered(&app, &bot, &["+33 6 12 34 56 78"]).await;

    // A new version's new field comes last, in flow order.
    assert_ok(
        &app.save_flow(&owner.token, &bot, two_questions(true), None)
            .await,
    );
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    assert_eq!(
        result_fields(&app, &owner.token, &bot).await,
        json!(["name", "comment", "plan"])
    );
    let v2 = answered(&app, &bot, &["Kim", "ok", "pro"]).await;

    let (header, rows) = parsed(export(&app, Some(&owner.token), &bot, "").await).await;
    assert_eq!(
        header,
        [
            "conversation_id",
            "status",
            "started_at",
            "ended_at",
            "version",
            "name",
            "comment",
            "plan"
        ]
    );
    assert_eq!(rows.len(), 5);
    let row = |id: &str| {
        rows.get(id)
            .unwrap_or_else(|| panic!("no row for {id}: {rows:?}"))
    };
    assert_eq!(row(&comma)[1], "COMPLETED");
    assert_eq!(row(&comma)[4], "1");
    assert!(!row(&comma)[3].is_empty());
    assert_eq!(row(&comma)[5], "Doe, Jane");
    assert_eq!(row(&comma)[6], "She said \"hi\"\nand left");
    assert_eq!(row(&comma)[7], "");
    assert_eq!(row(&emoji)[5], "Zoë 🙂 李");
    assert_eq!(row(&emoji)[6], "'=HYPERLINK(\"http://evil.example\",\"x\")");
    assert_eq!(row(&signs)[5], "'@admin");
    assert_eq!(row(&signs)[6], "-12.5");
    assert_eq!(row(&active)[1], "ACTIVE");
    assert_eq!(row(&active)[3], "");
    assert_eq!(row(&active)[5], "'+33 6 12 34 56 78");
    assert_eq!(row(&active)[6], "");
    assert_eq!(row(&v2)[4], "2");
    assert_eq!(row(&v2)[7], "Pro");
    // started_at is RFC 3339.
    assert!(
        chrono::DateTime::parse_from_rfc3339(&row(&comma)[2]).is_ok(),
        "{:?}",
        row(&comma)
    );

    // Filters: status, and time.
    let (_, completed) =
        parsed(export(&app, Some(&owner.token), &bot, "?status=COMPLETED").await).await;
    assert_eq!(completed.len(), 4);
    assert!(!completed.contains_key(&active));
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let earlier = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let q = |k: &str, t: &str| {
        format!(
            "?{k}={}",
            url::form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>()
        )
    };
    let (header_only, none) =
        parsed(export(&app, Some(&owner.token), &bot, &q("from", &later)).await).await;
    assert_eq!(header_only.len(), 8);
    assert!(none.is_empty());
    let (_, all) = parsed(export(&app, Some(&owner.token), &bot, &q("to", &later)).await).await;
    assert_eq!(all.len(), 5);
    let (_, none) = parsed(export(&app, Some(&owner.token), &bot, &q("to", &earlier)).await).await;
    assert!(none.is_empty());

    // Refusals.
    assert_eq!(export(&app, None, &bot, "").await.status(), 401);
    assert_eq!(
        export(&app, Some(&stranger.token), &bot, "").await.status(),
        404
    );
    assert_eq!(
        export(&app, Some(&owner.token), "not-a-bot", "")
            .await
            .status(),
        404
    );
    let bad = export(&app, Some(&owner.token), &bot, "?status=DONE").await;
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.expect("JSON error");
    assert_error(&body, "BAD_USER_INPUT");
    assert_eq!(
        export(&app, Some(&owner.token), &bot, "?from=yesterday")
            .await
            .status(),
        400
    );

    // An API key (MEMBER) exports too.
    let (key, _) = new_api_key(&app, &owner.token, &owner.account_id, "MEMBER").await;
    let (_, rows) = parsed(export(&app, Some(&key), &bot, "").await).await;
    assert_eq!(rows.len(), 5);

    // Bot.conversations by time.
    let count = |from: Option<&str>, to: Option<&str>| {
        let (app, token, bot) = (&app, owner.token.clone(), bot.clone());
        let (from, to) = (from.map(str::to_owned), to.map(str::to_owned));
        async move {
            let body = app
                .gql(&token, "query($b: ID!, $f: DateTime, $t: DateTime) { bot(id: $b) { conversations(first: 50, from: $f, to: $t) { edges { node { id } } } } }", json!({ "b": bot, "f": from, "t": to }))
                .await;
            assert_ok(&body);
            body["data"]["bot"]["conversations"]["edges"]
                .as_array()
                .map_or(0, Vec::len)
        }
    };
    assert_eq!(count(None, None).await, 5);
    assert_eq!(count(Some(&later), None).await, 0);
    assert_eq!(count(Some(&earlier), Some(&later)).await, 5);
    assert_eq!(count(None, Some(&earlier)).await, 0);
}

#[tokio::test]
async fn the_export_pages_through_many_conversations() {
    let app = spawn_app_with(|s| s.limits.visitor_rate_limit = 0).await;
    let owner = app.new_user().await;
    let bot = app.new_bot(&owner).await;
    assert_ok(
        &app.save_flow(&owner.token, &bot, two_questions(false), None)
            .await,
    );
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    // More than one export page (500), so that paging neither skips nor repeats a row.
    let mut ids = Vec::new();
    for _ in 0..520 {
        ids.push(app.new_conversation(&bot).await.0);
    }
    let (_, rows) = parsed(export(&app, Some(&owner.token), &bot, "").await).await;
    assert_eq!(rows.len(), 520);
    for id in &ids {
        assert!(rows.contains_key(id), "{id} missing");
    }
}
