//! Batches user look-ups of one request (e.g. every member of an account) into one query.
use std::{collections::HashMap, sync::Arc};

use async_graphql::dataloader::Loader;
use entity::user;
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter};
use uuid::Uuid;

use crate::db::Db;

/// Loads users by id.
pub struct UserLoader(pub Db);

impl Loader<Uuid> for UserLoader {
    type Value = user::Model;
    type Error = Arc<DbErr>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, user::Model>, Self::Error> {
        let users = user::Entity::find()
            .filter(user::Column::Id.is_in(keys.iter().copied()))
            .all(self.0.conn())
            .await?;
        Ok(users.into_iter().map(|u| (u.id, u)).collect())
    }
}
