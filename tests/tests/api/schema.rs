/// `schema.graphql` is generated from the code; regenerate it with
/// `cargo run -p parley -- print-schema > schema.graphql` (or run this test with
/// `UPDATE_SCHEMA=1`).
#[test]
fn schema_graphql_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema.graphql");
    let generated = parley::graphql::sdl();
    if std::env::var("UPDATE_SCHEMA").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("write schema.graphql");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "schema.graphql is out of date: run `UPDATE_SCHEMA=1 cargo test -p tests schema` and commit it"
    );
}

/// Every name the API contract fixes must be in the schema.
#[test]
fn the_schema_has_every_contract_operation_built_so_far() {
    let sdl = parley::graphql::sdl();
    for name in [
        "signUp(input: SignUpInput!): AuthPayload!",
        "logIn(email: String!, password: String!): AuthPayload!",
        "createAccount(name: String!): Account!",
        "inviteMember(accountId: ID!, email: String!, role: Role!): Invitation!",
        "acceptInvitation(token: String!): Membership!",
        "removeMember(accountId: ID!, userId: ID!): Boolean!",
        "me: User!",
        "account(id: ID!): Account",
    ] {
        assert!(sdl.contains(name), "the schema lacks `{name}`");
    }
}
