//! Starts: a new conversation's row and first step, written in one go when its bot is as
//! last seen here and its first step allows, else as a full step.
use super::*;

/// Largest prefilled `variables` object, serialised.
const MAX_PREFILLED_BYTES: usize = 16 * 1024;

/// The prefilled variables of a start, checked.
fn prefilled(variables: Option<Value>) -> ApiResult<Map<String, Value>> {
    let prefilled = match variables {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(ApiError::bad_input("variables must be a JSON object")),
    };
    if serde_json::to_vec(&prefilled).map_or(0, |v| v.len()) > MAX_PREFILLED_BYTES {
        return Err(ApiError::bad_input(format!(
            "variables must be at most {MAX_PREFILLED_BYTES} bytes of JSON"
        )));
    }
    Ok(prefilled)
}

/// A new conversation's row, before its first step, and the visitor's token.
fn new_conversation(
    account_id: Uuid,
    bot_id: Uuid,
    version: i32,
    prefilled: Map<String, Value>,
) -> ApiResult<(conversation::Model, String)> {
    let token = random_token();
    let now = Utc::now();
    let conv = conversation::Model {
        id: Uuid::now_v7(),
        account_id,
        bot_id,
        version,
        status: ConversationStatus::Active,
        state: serde_json::to_value(State::for_visitor(prefilled, rand::random()))
            .map_err(anyhow::Error::from)?,
        last_seq: 0,
        visitor_token_hash: token_hash(&token),
        started_at: now,
        ended_at: None,
        updated_at: now,
        resume_at: None,
        resume_claimed_by: None,
        resume_claimed_until: None,
        callback_token_hash: None,
    };
    Ok((conv, token))
}

/// Whether `e` is the database refusing a row whose foreign key names a row that is gone.
pub(super) fn is_foreign_key_violation(e: &anyhow::Error) -> bool {
    e.downcast_ref::<sea_orm::DbErr>()
        .and_then(sea_orm::DbErr::sql_err)
        .is_some_and(|e| matches!(e, sea_orm::SqlErr::ForeignKeyConstraintViolation(_)))
}

impl Runtime {
    /// Starts a conversation on the bot's latest published version and runs it up to its
    /// first question (or its end). The work runs to its end even if the caller goes away (a
    /// request cancelled at its deadline): a turn is never cut in half.
    pub async fn start(
        self: &Arc<Self>,
        on: StartOn,
        variables: Option<Value>,
    ) -> ApiResult<VisitorSession> {
        let this = self.clone();
        tokio::spawn(async move {
            let prefilled = prefilled(variables)?;
            let (bot, read_at) = match on {
                StartOn::Read(bot, read_at) => (bot, read_at),
                StartOn::Seen(seen) => match this.start_seen(&seen, prefilled.clone()).await? {
                    Some(session) => return Ok(session),
                    // The bot changed, or its first step needs the full step: as a bot not
                    // seen. (A start that may not read the bot, its origin checked, never
                    // comes here: it read it.)
                    None => {
                        let read_at = this.bot_stamp();
                        let bot =
                            crate::bots::appearance::bot_for_visitor(this.db.conn(), seen.id, None)
                                .await?;
                        (bot, read_at)
                    }
                },
            };
            // Boxed, as is the full step below: the quick path is the common one, and a
            // future as large as the full step's is copied whole each time it moves (on spawn,
            // in and out of the task), a few percent of the server's CPU in a profile of starts.
            Box::pin(this.start_now(bot, read_at, prefilled)).await
        })
        .await?
    }

    /// A start on a bot as last seen here: written in one go if its first step can be and
    /// the bot's published version is still the one seen; on SQLite, else, with the full
    /// step on the bot as seen (see [`SeenBot`]). `None`, nothing written, if neither.
    async fn start_seen(
        self: &Arc<Self>,
        seen: &SeenBot,
        prefilled: Map<String, Value>,
    ) -> ApiResult<Option<VisitorSession>> {
        let began = std::time::Instant::now();
        let (conv, token) = new_conversation(seen.account_id, seen.id, seen.version, prefilled)?;
        let id = conv.id;
        let quick = if seen.full {
            Ok(Quick::Full { counted: false })
        } else {
            self.quick_start(&conv, Some(&seen.name)).await
        };
        match quick {
            Ok(Quick::Done(done)) => {
                crate::metrics::turn_path("quick_new");
                self.finish(id, "start", began, *done);
                Ok(Some(VisitorSession {
                    conversation_id: id,
                    visitor_token: token,
                }))
            }
            Ok(Quick::Full { .. }) if self.db.kind() == DatabaseKind::Sqlite => {
                let first = Step {
                    create: Some(conv),
                    bot_name: Some(seen.name.clone()),
                    quick_tried: true,
                    ..Step::default()
                };
                Box::pin(self.drive(id, Input::Start, first)).await?;
                Ok(Some(VisitorSession {
                    conversation_id: id,
                    visitor_token: token,
                }))
            }
            Ok(Quick::Full { .. }) | Err(Undone::Stale) => {
                self.seen_bots.invalidate(&seen.id);
                Ok(None)
            }
            Err(Undone::Failed(e)) => Err(e),
        }
    }

    async fn start_now(
        self: &Arc<Self>,
        bot: bot::Model,
        read_at: BotStamp,
        prefilled: Map<String, Value>,
    ) -> ApiResult<VisitorSession> {
        let version = bot.published_version.ok_or_else(|| {
            ApiError::bad_input(
                "this bot is not published yet: publish it before starting conversations",
            )
        })?;
        let (conv, token) = new_conversation(bot.account_id, bot.id, version, prefilled)?;
        let id = conv.id;
        let first = Step {
            create: Some(conv),
            bot_name: Some(bot.name),
            read_at: Some(read_at),
            ..Step::default()
        };
        self.drive(id, Input::Start, first).await?;
        Ok(VisitorSession {
            conversation_id: id,
            visitor_token: token,
        })
    }

    /// A start's full step. On SQLite its account's webhooks are taken first, as kept in
    /// memory or read on a reading connection: every start needs them (who takes
    /// `conversation.started`), and a read in the step would be one more hop in the writer's
    /// line, which every step waits in. Then the step is taken before its write
    /// ([`Self::start_ahead`]). Taken outside the transaction, the webhooks may miss a change
    /// made meanwhile: one deleted makes the step's delivery fail its foreign key, and then
    /// the step is taken again, reading them in its transaction; one created or changed at
    /// the same moment counts as changed just after the start.
    pub(super) async fn start_step(
        self: &Arc<Self>,
        conversation_id: Uuid,
        input: Input,
        mut step: Step,
    ) -> Result<StepDone, Undone> {
        let account_id = match (&step.create, self.db.kind()) {
            (Some(new), DatabaseKind::Sqlite) => new.account_id,
            _ => return self.step_once(conversation_id, input, step, None).await,
        };
        step.hooks = Some(
            self.hooks
                .get(self.db.conn(), account_id)
                .await
                .map_err(Undone::Failed)?,
        );
        let again = (input.clone(), step.clone());
        match self.start_ahead(conversation_id, input, step).await {
            Err(Undone::Failed(ApiError::Internal(e))) if is_foreign_key_violation(&e) => {
                tracing::info!(conversation.id = %conversation_id, error.cause = ?e, "a start on webhooks read before its step named one gone; taking it again, reading them in the step");
                self.hooks.forget();
                let (input, mut step) = again;
                step.hooks = None;
                match self.step_once(conversation_id, input, step, None).await {
                    // With the webhooks read in the step, only the conversation's own row can
                    // name something gone: its bot, deleted since it was read.
                    Err(Undone::Failed(ApiError::Internal(e))) if is_foreign_key_violation(&e) => {
                        Err(Undone::Failed(ApiError::not_found("bot")))
                    }
                    other => other,
                }
            }
            other => other,
        }
    }

    /// SQLite: a start's full step on its account's webhooks read ahead, taken before its
    /// write: the engine and the payloads run here, on the request's thread, and the writer
    /// thread only sends the step's inserts, together with the other writes so prepared that
    /// wait at that moment (see [`crate::db::Db::write_deferred`]). A start only inserts
    /// (its conversation, events and deliveries) and reads nothing the writer's
    /// transaction would have to see.
    async fn start_ahead(
        self: &Arc<Self>,
        conversation_id: Uuid,
        input: Input,
        step: Step,
    ) -> Result<StepDone, Undone> {
        let mut kept = None;
        let done = self
            .step_in(
                self.db.conn(),
                conversation_id,
                input,
                step,
                None,
                Writes::Later(&mut kept),
            )
            .await
            .map_err(Undone::Failed)?
            .ok_or_else(|| {
                Undone::Failed(ApiError::Internal(anyhow::anyhow!(
                    "a new conversation's first step found its row changed"
                )))
            })?;
        let Some(inserts) = kept.filter(|kept| !kept.is_empty()) else {
            return Ok(done);
        };
        match self.db.write_deferred(inserts).await {
            Some(written) => written.map(|()| done).map_err(Undone::from),
            None => Err(Undone::Failed(ApiError::Internal(anyhow::anyhow!(
                "SQLite steps have no writer thread"
            )))),
        }
    }
}
