"""The collector daemon: follows a host's spool directory and stores what it finds in Postgres."""
