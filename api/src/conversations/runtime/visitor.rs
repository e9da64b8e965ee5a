//! What a visitor's requests read: their conversation, checked against their token, and its
//! events after a `seq` (a subscription's replay), from what this instance knows where it can.
use entity::{conversation, conversation_event};
use sea_orm::{
    ColumnTrait as _, EntityTrait as _, QueryFilter as _, QueryOrder as _, QuerySelect as _,
};
use uuid::Uuid;

use super::{REPLAY_PAGE, Runtime, visitor_not_found};
use crate::{error::ApiResult, events::SharedEvent, opaque::token_hash};

impl Runtime {
    /// A conversation, if `visitor_token` is its token.
    pub async fn find_for_visitor(
        &self,
        conversation_id: Uuid,
        visitor_token: &str,
    ) -> ApiResult<conversation::Model> {
        let conv = crate::db::by_key(
            conversation::Entity::find_by_id(conversation_id),
            self.db.conn(),
        )
        .await?
        .ok_or_else(visitor_not_found)?;
        if conv.visitor_token_hash != token_hash(visitor_token.trim()) {
            return Err(visitor_not_found());
        }
        Ok(conv)
    }

    /// The conversation `visitor_token` opens, for checks of what never changes in it (its
    /// token, bot and account): as this instance last stepped it, with its `state` left out
    /// (null), when that is how it is stored (see [`Known::is_current`]: a conversation goes
    /// with its bot, and a bot deleted on this instance is forgotten here, see
    /// [`Self::forget_bot`]), or else as stored.
    pub async fn visitors_conversation(
        &self,
        conversation_id: Uuid,
        visitor_token: &str,
    ) -> ApiResult<conversation::Model> {
        match self.current(conversation_id) {
            Some(known) if known.conv.visitor_token_hash == token_hash(visitor_token.trim()) => {
                Ok(known.conv.clone())
            }
            Some(_) => Err(visitor_not_found()),
            None => self.find_for_visitor(conversation_id, visitor_token).await,
        }
    }

    /// The stored events of a conversation after `after_seq`, in order, [`REPLAY_PAGE`] at
    /// most. When this instance is the only one, every step is taken here, so what its last
    /// step of the conversation left (see [`Known::last_events`]) is what is stored, up to
    /// steps still being committed, whose events reach subscribers once they are: a
    /// subscription right after a start reads nothing.
    pub async fn events_after(
        &self,
        conversation_id: Uuid,
        after_seq: i32,
    ) -> ApiResult<Vec<SharedEvent>> {
        if let Some(known) = self.current(conversation_id) {
            if known.conv.last_seq <= after_seq {
                return Ok(Vec::new());
            }
            if known
                .last_events
                .first()
                .is_some_and(|first| first.seq <= after_seq + 1)
            {
                return Ok(known
                    .last_events
                    .iter()
                    .filter(|e| e.seq > after_seq)
                    .cloned()
                    .collect());
            }
        }
        Ok(self
            .events_page(conversation_id, after_seq, REPLAY_PAGE)
            .await?
            .into_iter()
            .map(SharedEvent::new)
            .collect())
    }

    /// At most `limit` events with `seq > after_seq`, in order.
    pub async fn events_page(
        &self,
        conversation_id: Uuid,
        after_seq: i32,
        limit: u64,
    ) -> ApiResult<Vec<conversation_event::Model>> {
        Ok(conversation_event::Entity::find()
            .filter(conversation_event::Column::ConversationId.eq(conversation_id))
            .filter(conversation_event::Column::Seq.gt(after_seq))
            .order_by_asc(conversation_event::Column::Seq)
            .limit(limit)
            .all(self.db.conn())
            .await?)
    }
}
