use serde_json::{Value, json};

use crate::helpers::*;

const HOOK_URL: &str = "http://127.0.0.1:9/hook";

#[tokio::test]
async fn a_bot_is_created_renamed_listed_and_deleted() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let created = app
        .create_bot(&owner.token, &owner.account_id, "  Lead bot ")
        .await;
    assert_ok(&created);
    let bot = &created["data"]["createBot"];
    assert_eq!(bot["name"], "Lead bot");
    assert_eq!(bot["revision"], 0);
    assert_eq!(bot["flow"]["blocks"], json!([]));
    assert_eq!(bot["published"], Value::Null);
    let id = bot["id"].as_str().expect("id");

    assert_eq!(
        app.rename_bot(&owner.token, id, "Sales bot").await["data"]["renameBot"]["name"],
        "Sales bot"
    );
    assert_error(
        &app.rename_bot(&owner.token, id, " ").await,
        "BAD_USER_INPUT",
    );
    let listed = app
        .gql(
            &owner.token,
            "query($a: ID!) { account(id: $a) { bots { id name } } }",
            json!({ "a": owner.account_id }),
        )
        .await;
    assert_eq!(
        listed["data"]["account"]["bots"],
        json!([{ "id": id, "name": "Sales bot" }]),
        "{listed}"
    );

    assert_eq!(
        app.delete_bot(&owner.token, id).await["data"]["deleteBot"],
        true
    );
    assert_eq!(app.bot(&owner.token, id).await["data"]["bot"], Value::Null);
    assert_error(&app.delete_bot(&owner.token, id).await, "NOT_FOUND");
}

#[tokio::test]
async fn a_nul_character_in_any_graphql_string_is_refused_and_nothing_is_written() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let refused = app
        .create_bot(&owner.token, &owner.account_id, "Lead\u{0}bot")
        .await;
    assert_error(&refused, "BAD_USER_INPUT");
    assert!(
        refused["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`$n`") && m.contains("U+0000")),
        "{refused}"
    );
    // In a literal of the query, twice: a refused document is not kept as a good one.
    let literal = |name: &str| {
        format!(
            r#"mutation {{ createBot(accountId: "{}", name: "{name}") {{ id }} }}"#,
            owner.account_id
        )
    };
    for _ in 0..2 {
        assert_error(
            &app.gql(&owner.token, &literal("Lead\\u0000bot"), json!({}))
                .await,
            "BAD_USER_INPUT",
        );
    }
    // Deep inside an input object, and as a key (refused before validation would call it an
    // unknown field).
    let bot = app.new_bot(&owner).await;
    for flow in [
        json!({ "startBlockId": "m", "blocks": [{ "id": "m", "kind": "MESSAGE", "text": "Hi\u{0}" }] }),
        json!({ "startBlockId": "m", "blocks": [{ "id": "m", "kind": "MESSAGE", "text": "Hi", "x\u{0}": 1 }] }),
    ] {
        let refused = app.save_flow(&owner.token, &bot, flow, None).await;
        assert_error(&refused, "BAD_USER_INPUT");
        assert!(
            refused["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("`$f`") && m.contains("U+0000")),
            "{refused}"
        );
    }
    let listed = app
        .gql(
            &owner.token,
            "query($a: ID!) { account(id: $a) { bots { name revision } } }",
            json!({ "a": owner.account_id }),
        )
        .await;
    assert_eq!(
        listed["data"]["account"]["bots"],
        json!([{ "name": "Lead bot", "revision": 0 }]),
        "{listed}"
    );
    // The text of an escape is not a NUL.
    let escaped = app
        .gql(&owner.token, &literal("Lead\\\\u0000bot"), json!({}))
        .await;
    assert_ok(&escaped);
}

#[tokio::test]
async fn every_block_kind_and_field_round_trips_through_save_flow() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let webhook = app.new_webhook(&owner, HOOK_URL).await;
    let bot = app.new_bot(&owner).await;
    let flow = json!({
        "startBlockId": "hi",
        "blocks": [
            { "id": "hi", "kind": "MESSAGE", "text": "Hi {{name}}!", "next": "plan" },
            { "id": "plan", "kind": "QUESTION", "text": "Which plan?", "questionType": "CHOICE", "saveAnswerTo": "plan",
              "choices": [ { "label": "Free", "value": "free", "next": "bye" }, { "label": "Pro" } ], "next": "age" },
            { "id": "age", "kind": "QUESTION", "text": "Age?", "questionType": "NUMBER", "saveAnswerTo": "age", "next": "hook" },
            { "id": "hook", "kind": "WEBHOOK", "webhookId": webhook, "async": false, "next": "route" },
            { "id": "route", "kind": "CONDITION", "conditions": [
                { "variable": "age", "operator": "GREATER_THAN", "value": "17", "next": "adult" },
                { "variable": "vip", "operator": "IS_SET", "next": "adult" } ], "next": "bye" },
            { "id": "adult", "kind": "QUESTION", "text": "Email?", "questionType": "EMAIL", "saveAnswerTo": "email", "next": "phone" },
            { "id": "phone", "kind": "QUESTION", "text": "Phone?", "questionType": "PHONE", "saveAnswerTo": "phone", "next": "free_text" },
            { "id": "free_text", "kind": "QUESTION", "text": "Anything else?", "questionType": "TEXT", "saveAnswerTo": "note", "next": "bye" },
            { "id": "bye", "kind": "END" }
        ]
    });
    let saved = app
        .save_flow(&owner.token, &bot, flow.clone(), Some(0))
        .await;
    assert_ok(&saved);
    assert_eq!(saved["data"]["saveFlow"]["revision"], 1);
    let read = app.bot(&owner.token, &bot).await;
    let got = &read["data"]["bot"]["flow"];
    assert_eq!(got["startBlockId"], "hi");
    let blocks = got["blocks"].as_array().expect("blocks");
    assert_eq!(blocks.len(), 9);
    // Every field given comes back as given; fields not given come back null.
    for (sent, back) in flow["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .zip(blocks)
    {
        for (key, value) in sent.as_object().expect("object") {
            if key == "choices" || key == "conditions" {
                for (s, b) in value
                    .as_array()
                    .expect("list")
                    .iter()
                    .zip(back[key].as_array().expect("list"))
                {
                    for (k, v) in s.as_object().expect("object") {
                        assert_eq!(&b[k], v, "{key}.{k} of block {}", sent["id"]);
                    }
                }
            } else {
                assert_eq!(&back[key], value, "{key} of block {}", sent["id"]);
            }
        }
    }
    assert_eq!(read["data"]["bot"]["flowWarnings"], json!([]));
}

async fn rejected(app: &TestApp, owner: &TestUser, flow: Value) -> Vec<(Option<String>, String)> {
    let bot = app.new_bot(owner).await;
    let body = app.save_flow(&owner.token, &bot, flow, None).await;
    assert_error(&body, "BAD_USER_INPUT");
    // Nothing was saved.
    assert_eq!(
        app.bot(&owner.token, &bot).await["data"]["bot"]["revision"],
        0
    );
    problems(&body)
}

fn has(problems: &[(Option<String>, String)], block: Option<&str>, field: &str) -> bool {
    problems
        .iter()
        .any(|(b, f)| b.as_deref() == block && f == field)
}

#[tokio::test]
async fn duplicate_block_ids_are_a_problem() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let p = rejected(&app, &owner, json!({ "startBlockId": "a", "blocks": [
        { "id": "a", "kind": "MESSAGE", "text": "x", "next": "b" }, { "id": "a", "kind": "END" }, { "id": "b", "kind": "END" } ] })).await;
    assert!(has(&p, Some("a"), "id"), "{p:?}");
}

#[tokio::test]
async fn a_missing_start_block_is_a_problem() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let p = rejected(
        &app,
        &owner,
        json!({ "startBlockId": "ghost", "blocks": [ { "id": "a", "kind": "END" } ] }),
    )
    .await;
    assert!(has(&p, None, "startBlockId"), "{p:?}");
}

#[tokio::test]
async fn dangling_next_choice_and_condition_targets_are_problems() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let p = rejected(&app, &owner, json!({ "startBlockId": "m", "blocks": [
        { "id": "m", "kind": "MESSAGE", "text": "x", "next": "nowhere" },
        { "id": "q", "kind": "QUESTION", "text": "pick", "questionType": "CHOICE", "choices": [ { "label": "A", "next": "void" } ], "next": "m" },
        { "id": "c", "kind": "CONDITION", "conditions": [ { "variable": "v", "operator": "EQUALS", "value": "1", "next": "abyss" } ], "next": "q" } ] })).await;
    assert!(has(&p, Some("m"), "next"), "{p:?}");
    assert!(has(&p, Some("q"), "choices[0].next"), "{p:?}");
    assert!(has(&p, Some("c"), "conditions[0].next"), "{p:?}");
}

#[tokio::test]
async fn fields_required_by_the_kind_are_problems_when_missing() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let p = rejected(
        &app,
        &owner,
        json!({ "startBlockId": "m", "blocks": [
        { "id": "m", "kind": "MESSAGE", "next": "q" },
        { "id": "q", "kind": "QUESTION", "questionType": "TEXT", "next": "w" },
        { "id": "w", "kind": "WEBHOOK", "next": "c" },
        { "id": "c", "kind": "CONDITION", "next": "e" },
        { "id": "e", "kind": "END" } ] }),
    )
    .await;
    assert!(has(&p, Some("m"), "text"), "{p:?}");
    assert!(has(&p, Some("q"), "text"), "{p:?}");
    assert!(has(&p, Some("w"), "webhookId"), "{p:?}");
    assert!(has(&p, Some("c"), "conditions"), "{p:?}");
}

#[tokio::test]
async fn choices_on_a_question_that_is_not_a_choice_are_a_problem() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let p = rejected(&app, &owner, json!({ "startBlockId": "q", "blocks": [
        { "id": "q", "kind": "QUESTION", "text": "email?", "questionType": "EMAIL", "choices": [ { "label": "A" } ] },
        { "id": "r", "kind": "QUESTION", "text": "pick", "questionType": "CHOICE", "choices": [] } ] })).await;
    assert!(has(&p, Some("q"), "choices"), "{p:?}");
    assert!(has(&p, Some("r"), "choices"), "{p:?}");
}

#[tokio::test]
async fn an_empty_or_reserved_save_answer_to_is_a_problem() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let p = rejected(
        &app,
        &owner,
        json!({ "startBlockId": "a", "blocks": [
        { "id": "a", "kind": "QUESTION", "text": "?", "saveAnswerTo": "  ", "next": "b" },
        { "id": "b", "kind": "QUESTION", "text": "?", "saveAnswerTo": "conversation", "next": "c" },
        { "id": "c", "kind": "QUESTION", "text": "?", "saveAnswerTo": "Conversation" } ] }),
    )
    .await;
    assert!(has(&p, Some("a"), "saveAnswerTo"), "{p:?}");
    assert!(has(&p, Some("b"), "saveAnswerTo"), "{p:?}");
    assert!(has(&p, Some("c"), "saveAnswerTo"), "{p:?}");
}

#[tokio::test]
async fn a_webhook_of_another_account_is_a_problem() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let stranger = app.new_user().await;
    let foreign = app.new_webhook(&stranger, HOOK_URL).await;
    let p = rejected(&app, &owner, seed_flow(&foreign, true)).await;
    assert_eq!(p, vec![(Some("hook".to_owned()), "webhookId".to_owned())]);
    let p = rejected(&app, &owner, seed_flow("not-a-webhook", true)).await;
    assert_eq!(p, vec![(Some("hook".to_owned()), "webhookId".to_owned())]);
}

#[tokio::test]
async fn a_loop_without_a_question_is_a_problem_but_one_with_a_question_is_fine() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let p = rejected(
        &app,
        &owner,
        json!({ "startBlockId": "a", "blocks": [
        { "id": "a", "kind": "MESSAGE", "text": "one", "next": "b" },
        { "id": "b", "kind": "MESSAGE", "text": "two", "next": "a" } ] }),
    )
    .await;
    assert!(has(&p, Some("a"), "next"), "{p:?}");

    let bot = app.new_bot(&owner).await;
    let fine = app
        .save_flow(
            &owner.token,
            &bot,
            json!({ "startBlockId": "a", "blocks": [
        { "id": "a", "kind": "MESSAGE", "text": "one", "next": "q" },
        { "id": "q", "kind": "QUESTION", "text": "again?", "next": "a" } ] }),
            None,
        )
        .await;
    assert_ok(&fine);
}

#[tokio::test]
async fn every_problem_is_listed_at_once() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let p = rejected(
        &app,
        &owner,
        json!({ "startBlockId": "ghost", "blocks": [
        { "id": "m", "kind": "MESSAGE", "next": "nowhere" },
        { "id": "m", "kind": "END" },
        { "id": "q", "kind": "QUESTION", "text": "?", "saveAnswerTo": "conversation" } ] }),
    )
    .await;
    for (block, field) in [
        (None, "startBlockId"),
        (Some("m"), "text"),
        (Some("m"), "next"),
        (Some("m"), "id"),
        (Some("q"), "saveAnswerTo"),
    ] {
        assert!(has(&p, block, field), "missing {block:?}/{field} in {p:?}");
    }
}

#[tokio::test]
async fn oversized_flows_and_texts_are_refused_with_a_clear_problem() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let p = rejected(&app, &owner, json!({ "startBlockId": "m", "blocks": [ { "id": "m", "kind": "MESSAGE", "text": "x".repeat(5000) } ] })).await;
    assert!(has(&p, Some("m"), "text"), "{p:?}");
    let blocks: Vec<Value> = (0..501)
        .map(|i| json!({ "id": format!("b{i}"), "kind": "END" }))
        .collect();
    let p = rejected(
        &app,
        &owner,
        json!({ "startBlockId": "b0", "blocks": blocks }),
    )
    .await;
    assert!(has(&p, None, "blocks"), "{p:?}");
}

#[tokio::test]
async fn unreachable_blocks_are_saved_with_a_warning() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = app.new_bot(&owner).await;
    let body = app
        .save_flow(
            &owner.token,
            &bot,
            json!({ "startBlockId": "a", "blocks": [
        { "id": "a", "kind": "END" }, { "id": "island", "kind": "MESSAGE", "text": "alone" } ] }),
            None,
        )
        .await;
    assert_ok(&body);
    let warnings = body["data"]["saveFlow"]["flowWarnings"]
        .as_array()
        .expect("warnings")
        .clone();
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0]["blockId"], "island");
}

#[tokio::test]
async fn a_save_based_on_an_old_revision_is_a_conflict() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let webhook = app.new_webhook(&owner, HOOK_URL).await;
    let bot = app.new_bot(&owner).await;
    assert_ok(
        &app.save_flow(&owner.token, &bot, seed_flow(&webhook, true), Some(0))
            .await,
    );
    let stale = app
        .save_flow(&owner.token, &bot, seed_flow(&webhook, false), Some(0))
        .await;
    assert_error(&stale, "CONFLICT");
    let read = app.bot(&owner.token, &bot).await;
    assert_eq!(read["data"]["bot"]["revision"], 1);
    assert_eq!(
        read["data"]["bot"]["flow"]["blocks"][3]["async"], true,
        "the stale save changed nothing"
    );
    // Without expectedRevision the last writer wins.
    assert_eq!(
        app.save_flow(&owner.token, &bot, seed_flow(&webhook, false), None)
            .await["data"]["saveFlow"]["revision"],
        2
    );
}

#[tokio::test]
async fn publishing_freezes_the_draft_and_later_edits_leave_it_alone() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let webhook = app.new_webhook(&owner, HOOK_URL).await;
    let bot = app.new_bot(&owner).await;
    assert_error(&app.publish_bot(&owner.token, &bot).await, "BAD_USER_INPUT");

    assert_ok(
        &app.save_flow(&owner.token, &bot, seed_flow(&webhook, true), None)
            .await,
    );
    let v1 = app.publish_bot(&owner.token, &bot).await;
    assert_ok(&v1);
    assert_eq!(v1["data"]["publishBot"]["version"], 1);

    let mut edited = seed_flow(&webhook, true);
    edited["blocks"][0]["text"] = json!("Hello again!");
    assert_ok(&app.save_flow(&owner.token, &bot, edited, None).await);
    let read = app.bot(&owner.token, &bot).await;
    assert_eq!(
        read["data"]["bot"]["flow"]["blocks"][0]["text"],
        "Hello again!"
    );
    assert_eq!(read["data"]["bot"]["published"]["version"], 1);
    let published = app
        .gql(
            &owner.token,
            "query($id: ID!) { bot(id: $id) { published { flow { blocks { text } } } } }",
            json!({ "id": bot }),
        )
        .await;
    assert_eq!(
        published["data"]["bot"]["published"]["flow"]["blocks"][0]["text"],
        "Hi! Let's get in touch."
    );

    let v2 = app.publish_bot(&owner.token, &bot).await;
    assert_eq!(v2["data"]["publishBot"]["version"], 2);
    let versions = app.bot(&owner.token, &bot).await["data"]["bot"]["versions"].clone();
    assert_eq!(
        versions
            .as_array()
            .map(|v| v.iter().map(|x| x["version"].clone()).collect::<Vec<_>>()),
        Some(vec![json!(2), json!(1)])
    );
}

#[tokio::test]
async fn members_read_bots_but_only_admins_and_owners_change_them() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let admin = app.add_member(&owner, "ADMIN").await;
    let member = app.add_member(&owner, "MEMBER").await;
    let webhook = app.new_webhook(&owner, HOOK_URL).await;
    let bot = app.new_bot(&owner).await;

    assert_error(
        &app.create_bot(&member.token, &owner.account_id, "x").await,
        "FORBIDDEN",
    );
    assert_error(&app.rename_bot(&member.token, &bot, "x").await, "FORBIDDEN");
    assert_error(
        &app.save_flow(&member.token, &bot, seed_flow(&webhook, true), None)
            .await,
        "FORBIDDEN",
    );
    assert_error(&app.publish_bot(&member.token, &bot).await, "FORBIDDEN");
    assert_error(&app.delete_bot(&member.token, &bot).await, "FORBIDDEN");
    assert_ok(&app.bot(&member.token, &bot).await);
    assert_eq!(
        app.bot(&member.token, &bot).await["data"]["bot"]["id"],
        bot.as_str()
    );

    assert_ok(&app.create_bot(&admin.token, &owner.account_id, "x").await);
    assert_ok(&app.rename_bot(&admin.token, &bot, "y").await);
    assert_ok(
        &app.save_flow(&admin.token, &bot, seed_flow(&webhook, true), None)
            .await,
    );
    assert_ok(&app.publish_bot(&admin.token, &bot).await);
    assert_ok(&app.delete_bot(&admin.token, &bot).await);
}

#[tokio::test]
async fn another_accounts_bots_are_not_found_for_every_operation() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let stranger = app.new_user().await;
    let webhook = app.new_webhook(&owner, HOOK_URL).await;
    let bot = app.new_bot(&owner).await;
    assert_ok(
        &app.save_flow(&owner.token, &bot, seed_flow(&webhook, true), None)
            .await,
    );

    assert_eq!(
        app.bot(&stranger.token, &bot).await["data"]["bot"],
        Value::Null
    );
    assert_error(
        &app.create_bot(&stranger.token, &owner.account_id, "x")
            .await,
        "NOT_FOUND",
    );
    assert_error(
        &app.rename_bot(&stranger.token, &bot, "x").await,
        "NOT_FOUND",
    );
    assert_error(
        &app.save_flow(
            &stranger.token,
            &bot,
            json!({ "startBlockId": "e", "blocks": [ { "id": "e", "kind": "END" } ] }),
            None,
        )
        .await,
        "NOT_FOUND",
    );
    assert_error(&app.publish_bot(&stranger.token, &bot).await, "NOT_FOUND");
    assert_error(&app.delete_bot(&stranger.token, &bot).await, "NOT_FOUND");
    // And nothing changed.
    let read = app.bot(&owner.token, &bot).await;
    assert_eq!(read["data"]["bot"]["name"], "Lead bot");
    assert_eq!(read["data"]["bot"]["revision"], 1);
    assert_eq!(read["data"]["bot"]["published"], Value::Null);
}
