/// What sharding adds to each PostgreSQL cluster, and to the directory.
public enum ShardSchema {
    /// The SQLSTATE a fenced write fails with: the cluster does not own the row's shard.
    public static let wrongShardState = "MS001"

    /// On every cluster: the logical shards it owns, and a fence on the tables keyed by
    /// them. A write to a row of a shard the cluster does not own fails (`MS001`). The
    /// fence takes a share lock on the ownership row, so a move that deletes the row waits
    /// for writes in flight and every later write is refused.
    public static let cluster: [Migration] = [
        Migration(
            "shards-1-ownership",
            [
                "CREATE TABLE shard_ownership (logical int PRIMARY KEY, map_version bigint NOT NULL)",
                // Users carry the shard in their id; directory entries in a column.
                """
                CREATE FUNCTION millions_shard_fence() RETURNS trigger LANGUAGE plpgsql AS $$
                DECLARE l int; r record;
                BEGIN
                    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
                    IF TG_TABLE_NAME = 'users' THEN l := (r.id >> 12) & 1023; ELSE l := r.logical; END IF;
                    PERFORM 1 FROM shard_ownership WHERE logical = l FOR SHARE;
                    IF NOT FOUND THEN
                        RAISE EXCEPTION 'logical shard % is not on this cluster', l USING ERRCODE = 'MS001';
                    END IF;
                    RETURN r;
                END $$
                """,
                """
                CREATE TRIGGER users_shard_fence BEFORE INSERT OR UPDATE OR DELETE ON users
                FOR EACH ROW EXECUTE FUNCTION millions_shard_fence()
                """,
                // Emails are found by email, across clusters: each lives on the cluster that
                // owns its email's logical shard (`ShardMap.logicalShard(ofKey:)`).
                """
                CREATE TABLE email_directory (
                    email text PRIMARY KEY, logical int NOT NULL, user_id bigint NOT NULL,
                    state text NOT NULL, reserved_at double precision NOT NULL
                )
                """,
                "CREATE INDEX email_directory_reserved ON email_directory (reserved_at) WHERE state = 'reserved'",
                """
                CREATE TRIGGER email_directory_shard_fence BEFORE INSERT OR UPDATE OR DELETE ON email_directory
                FOR EACH ROW EXECUTE FUNCTION millions_shard_fence()
                """,
            ]),
        // Sessions live with their user (`ShardedSessionRows`): fenced and moved by the
        // user's shard. A session of a user on another cluster (kept here before sessions
        // were sharded) is a leftover that `millions shards clean` removes.
        Migration(
            "shards-2-sessions",
            [
                """
                CREATE OR REPLACE FUNCTION millions_shard_fence() RETURNS trigger LANGUAGE plpgsql AS $$
                DECLARE l int; r record;
                BEGIN
                    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
                    IF TG_TABLE_NAME = 'users' THEN l := (r.id >> 12) & 1023;
                    ELSIF TG_TABLE_NAME = 'sessions' THEN l := (r.user_id >> 12) & 1023;
                    ELSE l := r.logical; END IF;
                    PERFORM 1 FROM shard_ownership WHERE logical = l FOR SHARE;
                    IF NOT FOUND THEN
                        RAISE EXCEPTION 'logical shard % is not on this cluster', l USING ERRCODE = 'MS001';
                    END IF;
                    RETURN r;
                END $$
                """,
                """
                CREATE TRIGGER sessions_shard_fence BEFORE INSERT OR UPDATE OR DELETE ON sessions
                FOR EACH ROW EXECUTE FUNCTION millions_shard_fence()
                """,
                // A move reads, checks and deletes one shard's rows: by index, not a scan each.
                "CREATE INDEX users_logical ON users (((id >> 12) & 1023))",
                "CREATE INDEX sessions_logical ON sessions (((user_id >> 12) & 1023))",
                "CREATE INDEX email_directory_logical ON email_directory (logical)",
            ]),
        // The city directory: who lives in a city, on the cluster that owns the city's
        // logical shard, so the people of a city are one cluster's read. An entry copies the
        // names a list shows and the user row's version (bumped by every update), so writes
        // that arrive late never overwrite newer ones; a user who left a city leaves a
        // tombstone (`gone`) at that version, removed after a day.
        Migration(
            "shards-3-city-directory",
            [
                "ALTER TABLE users ADD COLUMN row_version bigint NOT NULL DEFAULT 0",
                """
                CREATE FUNCTION millions_row_version() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN NEW.row_version := OLD.row_version + 1; RETURN NEW; END $$
                """,
                "CREATE TRIGGER users_row_version BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION millions_row_version()",
                """
                CREATE TABLE city_directory (
                    city text NOT NULL, logical int NOT NULL, user_id bigint NOT NULL,
                    first_name text NOT NULL, last_name text NOT NULL, version bigint NOT NULL,
                    gone boolean NOT NULL, changed_at double precision NOT NULL,
                    PRIMARY KEY (city, user_id)
                )
                """,
                "CREATE INDEX city_directory_logical ON city_directory (logical)",
                "CREATE INDEX city_directory_tombstones ON city_directory (changed_at) WHERE gone",
                """
                CREATE TRIGGER city_directory_shard_fence BEFORE INSERT OR UPDATE OR DELETE ON city_directory
                FOR EACH ROW EXECUTE FUNCTION millions_shard_fence()
                """,
            ]),
    ]

    /// A table whose rows belong to logical shards: a move copies, verifies and cleans it.
    public struct Table: Sendable {
        public let name: String
        /// A row's logical shard, in SQL over the columns of the row named by the alias given.
        public let logical: @Sendable (String) -> String
        /// The order rows are checksummed in (unique together).
        public let key: [String]
    }

    /// Every table a shard's rows are in, in the order a move copies them.
    public static let tables: [Table] = [
        Table(name: "users", logical: { "((\($0).id >> 12) & 1023)" }, key: ["id"]),
        Table(name: "email_directory", logical: { "\($0).logical" }, key: ["email"]),
        Table(name: "sessions", logical: { "((\($0).user_id >> 12) & 1023)" }, key: ["id_hash"]),
        Table(name: "city_directory", logical: { "\($0).logical" }, key: ["city", "user_id"]),
    ]

    /// On the directory cluster: every version of the map, newest wins.
    public static let directory: [Migration] = [
        Migration(
            "shards-directory-1-maps",
            [
                """
                CREATE TABLE shard_maps (
                    version bigint PRIMARY KEY, owners text[] NOT NULL, created_at timestamptz NOT NULL DEFAULT now()
                )
                """
            ]),
        // Each cluster's number, given once and never reused: a job id names its cluster by
        // it (`ShardedJobQueue`), and names can be any text.
        Migration(
            "shards-directory-2-cluster-numbers",
            ["CREATE TABLE shard_clusters (name text PRIMARY KEY, number int UNIQUE NOT NULL CHECK (number >= 0))"]),
    ]
}
