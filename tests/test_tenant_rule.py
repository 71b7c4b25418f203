"""The tenant rule is written once (gallery.schemas.tenant_conditions) and rendered three ways: the engine's
check of one row (Scope.allows), SQLite's filter (filter_sql) and LanceDB's (where_clause). On any rows and
any scope, the three let through exactly the same images."""

from __future__ import annotations

import sqlite3
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.client.schema import Scope
from gallery.lance_filters import where_clause
from gallery.schemas import SearchFilters
from gallery.store import filter_sql

guilds, users = st.sampled_from([None, "g1", "g2"]), st.sampled_from([None, "u1", "u2"])
rows = st.lists(st.tuples(guilds, st.sampled_from(["discord", "cli", "desktop"]), users), max_size=30)
scopes = st.builds(Scope, guild=guilds, dm_of=users)


@settings(max_examples=200, deadline=None)
@given(rows=rows, scope=scopes)
def test_the_row_check_sqlite_and_lancedb_agree(rows: list, scope: Scope) -> None:
    db = sqlite3.connect(":memory:")
    db.execute('CREATE TABLE images (id INTEGER, guild TEXT, source TEXT, "user" TEXT, deleted_at TEXT)')
    db.executemany("INSERT INTO images VALUES (?, ?, ?, ?, NULL)", [(i, *row) for i, row in enumerate(rows)])
    filters = SearchFilters(guild=scope.guild, dm_of=scope.dm_of)
    allowed = {i for i, (g, s, u) in enumerate(rows) if scope.allows(SimpleNamespace(guild=g, source=s, user=u))}
    where, params = filter_sql(filters, "i")
    in_sqlite = {r[0] for r in db.execute(f"SELECT i.id FROM images AS i WHERE {where}", params)}
    lance = where_clause(filters)
    in_lance = {r[0] for r in db.execute("SELECT id FROM images" + (f" WHERE {lance}" if lance else ""))}
    assert allowed == in_sqlite == in_lance
