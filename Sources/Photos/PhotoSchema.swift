import DataTier

/// A user's photo columns, and photo files as large objects (`photos.store=postgres`).
public enum PhotoSchema {
    // The current photo's public variants; the newest uploaded original (what edits
    // apply to); the last version handed to a job and the version shown, so a job that
    // finishes late never replaces a newer photo.
    public static let sqlite: [Migration] = [
        Migration(
            "3-photos",
            [
                "ALTER TABLE users ADD COLUMN photo TEXT",
                "ALTER TABLE users ADD COLUMN photo_source TEXT",
                "ALTER TABLE users ADD COLUMN photo_version INTEGER NOT NULL DEFAULT 0",
                "ALTER TABLE users ADD COLUMN photo_applied INTEGER NOT NULL DEFAULT 0",
            ])
    ]

    public static let postgres: [Migration] = [
        Migration(
            "3-photos",
            [
                """
                ALTER TABLE users ADD COLUMN photo text, ADD COLUMN photo_source text,
                    ADD COLUMN photo_version bigint NOT NULL DEFAULT 0, ADD COLUMN photo_applied bigint NOT NULL DEFAULT 0
                """
            ]),
        // See PostgresPhotoStore.
        Migration(
            "5-photo-files",
            [
                """
                CREATE TABLE photo_files (
                    kind text NOT NULL, name text NOT NULL, object oid NOT NULL, bytes bigint NOT NULL,
                    created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (kind, name)
                )
                """
            ]),
    ]
}
