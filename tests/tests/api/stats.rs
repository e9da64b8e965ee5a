//! Funnel stats: `Bot.stats` on a scripted set of conversations.
use serde_json::{Value, json};

use crate::helpers::*;

const STATS: &str = "query($b: ID!, $f: DateTime, $t: DateTime) { bot(id: $b) { stats(from: $f, to: $t) { started completed abandoned completionRate droppedOffUnknown blocks { blockId reached droppedOff } } } }";

async fn stats(app: &TestApp, token: &str, bot: &str, from: Option<String>) -> Value {
    let body = app
        .gql(token, STATS, json!({ "b": bot, "f": from, "t": null }))
        .await;
    assert_ok(&body);
    body["data"]["bot"]["stats"].clone()
}

#[tokio::test]
async fn the_funnel_counts_who_reached_each_block_and_who_stopped_there() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = app.new_bot(&owner).await;
    let flow = json!({ "startBlockId": "ask_name", "blocks": [
        { "id": "ask_name", "kind": "QUESTION", "text": "Name?", "saveAnswerTo": "name", "next": "ask_plan" },
        { "id": "pro_msg", "kind": "MESSAGE", "text": "Great choice", "next": "bye" },
        { "id": "ask_plan", "kind": "QUESTION", "text": "Plan?", "questionType": "CHOICE",
          "choices": [{ "label": "Pro", "next": "pro_msg" }, { "label": "Free" }],
          "saveAnswerTo": "plan", "next": "bye" },
        { "id": "bye", "kind": "END" }
    ]});
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);

    let script: [&[&str]; 5] = [
        &[],
        &["Ann"],
        &["Bob", "Pro"],
        &["Cy", "Free"],
        &["Di", "Gold"],
    ];
    for answers in script {
        let (id, token) = app.new_conversation(&bot).await;
        for a in answers {
            assert_ok(&app.send_answer(&id, &token, a).await);
        }
    }

    let s = stats(&app, &owner.token, &bot, None).await;
    assert_eq!(s["started"], 5, "{s}");
    assert_eq!(s["completed"], 2, "{s}");
    assert_eq!(s["abandoned"], 0, "{s}");
    assert!(
        (s["completionRate"].as_f64().unwrap_or_default() - 0.4).abs() < 1e-9,
        "{s}"
    );
    assert_eq!(s["droppedOffUnknown"], 0, "{s}");
    assert_eq!(
        s["blocks"],
        json!([
            { "blockId": "ask_name", "reached": 5, "droppedOff": 1 },
            { "blockId": "ask_plan", "reached": 4, "droppedOff": 2 },
            { "blockId": "bye", "reached": 2, "droppedOff": 0 },
            { "blockId": "pro_msg", "reached": 1, "droppedOff": 0 },
        ]),
        "{s}"
    );

    // A window with nothing in it: zeros, blocks still listed.
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let s = stats(&app, &owner.token, &bot, Some(later)).await;
    assert_eq!(s["started"], 0, "{s}");
    assert_eq!(s["completionRate"], 0.0, "{s}");
    assert_eq!(
        s["blocks"][0],
        json!({ "blockId": "ask_name", "reached": 0, "droppedOff": 0 })
    );
}
