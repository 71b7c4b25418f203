"""Organising the gallery: boards, tags and ratings.

A board belongs to a scope (`Who.scope_for`): the engine's owner (`local`: the CLI and the desktop), a Discord
server (shared boards), one member of a server, or one user's DMs. A board never crosses the tenant rule: only
images its scope may see go on it, and a board outside the asker's scopes answers as if it did not exist.
Deleting a board never deletes its images.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gallery.models import BoardImageRow, BoardRow, ImageRow, ImageTagRow, SavedSearchRow
from gallery.schemas import BoardPublic, SavedSearch, SearchFilters, TagCount
from gallery.store import GalleryError, ImageNotFound, ImageStore, filter_sql
from gallery.tags import MAX_TAGS_PER_CALL, board_name, tag_of, unique

LOCAL = "local"


class BoardNotFound(GalleryError):
    """No such board among the asker's (another server's or member's answers the same)."""


class BoardDenied(GalleryError):
    """A board the asker sees but may not change (a shared board's name is its creator's)."""


class BoardExists(GalleryError):
    """A second board of the same name in one scope."""


@dataclass(frozen=True)
class Who:
    """Whose boards: the engine's owner (`discord` False: every local frontend), a Discord member in a server, or
    a Discord user in DMs."""

    user: str | None = None
    guild: str | None = None
    discord: bool = False

    def scopes(self) -> list[str]:
        """The scopes whose boards this asker sees."""
        if not self.discord:
            return [LOCAL]
        if self.guild is not None:
            return [f"g:{self.guild}", f"g:{self.guild}:u:{self.user}"]
        return [f"dm:{self.user}"]

    def scope_for(self, shared: bool) -> str:
        if not self.discord:
            return LOCAL
        if self.guild is not None:
            return f"g:{self.guild}" if shared else f"g:{self.guild}:u:{self.user}"
        return f"dm:{self.user}"

    def tenant(self) -> SearchFilters:
        """The images this asker's boards may hold (the gallery's tenant rule)."""
        if not self.discord:
            return SearchFilters()
        return SearchFilters(guild=self.guild) if self.guild is not None else SearchFilters(dm_of=self.user or "")


def is_shared(scope: str) -> bool:
    """Whether a board's (or saved search's) scope is seen by more than its creator: the owner's, or a server's."""
    return scope == LOCAL or (scope.startswith("g:") and ":u:" not in scope)


class Organiser:
    def __init__(self, engine: Engine, store: ImageStore) -> None:
        self.engine = engine
        self.store = store

    # --- boards ---------------------------------------------------------------------------------------
    def boards(self, who: Who) -> list[BoardPublic]:
        """The asker's boards by name, each with its count of live images and its newest one (the cover)."""
        sql = text(
            "SELECT b.id, b.name, b.scope, b.owner, b.created_at, count(i.id) AS n, max(i.id) AS cover "
            "FROM boards AS b LEFT JOIN board_images AS bi ON bi.board_id = b.id "
            "LEFT JOIN images AS i ON i.id = bi.image_id AND i.deleted_at IS NULL "
            f"WHERE b.scope IN ({', '.join(f':s{k}' for k in range(len(who.scopes())))}) "
            "GROUP BY b.id ORDER BY b.name_key"
        )
        with self.engine.connect() as conn:
            rows = conn.execute(sql, {f"s{k}": s for k, s in enumerate(who.scopes())}).all()
        return [self._public(r.id, r.name, r.scope, r.owner, r.created_at, r.n, r.cover) for r in rows]

    def board(self, who: Who, name_or_id: str | int) -> BoardPublic:
        """One of the asker's boards, by id or by name (a name is matched case-blind)."""
        row = self._row(who, name_or_id)
        return next(b for b in self.boards(who) if b.id == row.id)

    def create(self, who: Who, name: str, *, shared: bool = False) -> BoardPublic:
        name = board_name(name)
        row = BoardRow(scope=who.scope_for(shared), name=name, name_key=name.casefold(), owner=who.user)
        try:
            with Session(self.engine) as session, session.begin():
                session.add(row)
                session.flush()
                board_id = row.id
        except IntegrityError:
            raise BoardExists(f"there is already a board named {name!r} here") from None
        return self.board(who, board_id)

    def rename(self, who: Who, board: str | int, new_name: str) -> BoardPublic:
        row = self._own(who, board)
        name = board_name(new_name)
        try:
            with Session(self.engine) as session, session.begin():
                session.execute(
                    BoardRow.__table__.update().where(BoardRow.id == row.id).values(name=name, name_key=name.casefold())
                )
        except IntegrityError:
            raise BoardExists(f"there is already a board named {name!r} here") from None
        return self.board(who, row.id)

    def delete(self, who: Who, board: str | int) -> BoardPublic:
        """Remove the board; its images stay in the gallery."""
        row = self._own(who, board)
        public = self.board(who, row.id)
        with Session(self.engine) as session, session.begin():
            session.execute(delete(BoardImageRow).where(BoardImageRow.board_id == row.id))
            session.execute(delete(BoardRow).where(BoardRow.id == row.id))
        return public

    def add(self, who: Who, board: str | int, image_ids: list[int]) -> BoardPublic:
        row = self._row(who, board)
        self._check_images(who, image_ids)
        now = datetime.now(UTC)
        with Session(self.engine) as session, session.begin():
            already = select(BoardImageRow.image_id).where(BoardImageRow.board_id == row.id,
                                                           BoardImageRow.image_id.in_(image_ids))  # fmt: skip
            on = set(session.scalars(already))
            session.add_all(BoardImageRow(board_id=row.id, image_id=i, added_at=now)
                            for i in unique(image_ids) if i not in on)  # fmt: skip
        return self.board(who, row.id)

    def remove(self, who: Who, board: str | int, image_ids: list[int]) -> BoardPublic:
        row = self._row(who, board)
        with Session(self.engine) as session, session.begin():
            session.execute(delete(BoardImageRow).where(BoardImageRow.board_id == row.id,
                                                        BoardImageRow.image_id.in_(image_ids)))  # fmt: skip
        return self.board(who, row.id)

    def boards_of(self, who: Who, image_id: int) -> list[str]:
        """The names of the asker's boards this image is on."""
        with Session(self.engine) as session:
            return list(session.scalars(
                select(BoardRow.name).join(BoardImageRow, BoardImageRow.board_id == BoardRow.id)
                .where(BoardImageRow.image_id == image_id, BoardRow.scope.in_(who.scopes())).order_by(BoardRow.name_key)
            ))  # fmt: skip

    def _row(self, who: Who, board: str | int) -> BoardRow:
        with Session(self.engine) as session:
            query = select(BoardRow).where(BoardRow.scope.in_(who.scopes()))
            if isinstance(board, int):
                row = session.scalars(query.where(BoardRow.id == board)).first()
            else:
                key = board_name(board).casefold()
                row = session.scalars(query.where(BoardRow.name_key == key).order_by(BoardRow.scope.desc())).first()
            if row is None:
                raise BoardNotFound(f"no board {str(board)[:60]!r} here (dreamhall board list shows yours)")
            session.expunge(row)
            return row

    def _own(self, who: Who, board: str | int) -> BoardRow:
        row = self._row(who, board)
        if who.discord and row.owner != who.user:
            raise BoardDenied(f"board {row.name!r} is shared here; only the member who made it can rename or delete it")
        return row

    def _check_images(self, who: Who, image_ids: list[int]) -> None:
        if not image_ids:
            raise ImageNotFound("give at least one image id")
        allowed = self.store.filter_ids(image_ids, who.tenant())
        missing = [i for i in image_ids if i not in allowed]
        if missing:
            where = "this server's gallery" if who.discord else "the gallery"
            raise ImageNotFound(f"image {missing[0]} is not in {where}")

    @staticmethod
    def _public(id_: int, name: str, scope: str, owner: str | None, created: datetime, n: int, cover: int | None
                ) -> BoardPublic:  # fmt: skip
        shared = is_shared(scope)
        return BoardPublic(id=id_, name=name, shared=shared, owner=owner, count=n, cover=cover, created_at=created)

    # --- saved searches ("smart boards"), scoped as boards --------------------------------------------------
    def save_search(self, who: Who, name: str, query: str, filters: dict, *, shared: bool = False) -> SavedSearch:
        name = board_name(name)
        row = SavedSearchRow(scope=who.scope_for(shared), name=name, name_key=name.casefold(), owner=who.user,
                             query=query, filters=filters)  # fmt: skip
        try:
            with Session(self.engine) as session, session.begin():
                session.add(row)
                session.flush()
                return self._search(row)
        except IntegrityError:
            raise BoardExists(f"there is already a saved search named {name!r} here") from None

    def saved_searches(self, who: Who) -> list[SavedSearch]:
        with Session(self.engine) as session:
            rows = session.scalars(select(SavedSearchRow).where(SavedSearchRow.scope.in_(who.scopes()))
                                   .order_by(SavedSearchRow.name_key))  # fmt: skip
            return [self._search(r) for r in rows]

    def saved_search(self, who: Who, name_or_id: str | int) -> SavedSearch:
        with Session(self.engine) as session:
            query = select(SavedSearchRow).where(SavedSearchRow.scope.in_(who.scopes()))
            if isinstance(name_or_id, int):
                query = query.where(SavedSearchRow.id == name_or_id)
            else:
                query = query.where(SavedSearchRow.name_key == board_name(name_or_id).casefold())
            row = session.scalars(query).first()
            if row is None:
                raise BoardNotFound(f"no saved search {str(name_or_id)[:60]!r} here")
            return self._search(row)

    def delete_search(self, who: Who, name_or_id: str | int) -> SavedSearch:
        saved = self.saved_search(who, name_or_id)
        if who.discord and saved.owner != who.user:
            raise BoardDenied(f"saved search {saved.name!r} is shared here; only the member who saved it can delete it")
        with Session(self.engine) as session, session.begin():
            session.execute(delete(SavedSearchRow).where(SavedSearchRow.id == saved.id))
        return saved

    @staticmethod
    def _search(row: SavedSearchRow) -> SavedSearch:
        return SavedSearch(id=row.id, name=row.name, query=row.query, filters=row.filters or {},
                           shared=is_shared(row.scope), owner=row.owner, created_at=row.created_at)  # fmt: skip

    # --- tags and ratings -----------------------------------------------------------------------------
    def tag(self, image_id: int, add: list[str], remove: list[str] | None = None) -> list[str]:
        """A person's tags on and off an image; its tags after."""
        remove = remove or []
        if len(add) + len(remove) > MAX_TAGS_PER_CALL:
            raise ImageNotFound(f"at most {MAX_TAGS_PER_CALL} tags at once")
        adding, removing = unique(tag_of(t) for t in add), unique(tag_of(t) for t in remove)
        self.store.get(image_id)  # raises ImageNotFound for a deleted one
        with Session(self.engine) as session, session.begin():
            have = set(session.scalars(select(ImageTagRow.tag).where(ImageTagRow.image_id == image_id)))
            session.add_all(ImageTagRow(image_id=image_id, tag=t, auto=False) for t in adding if t not in have)
            if removing:
                session.execute(delete(ImageTagRow).where(ImageTagRow.image_id == image_id,
                                                          ImageTagRow.tag.in_(removing)))  # fmt: skip
        return self.tags_of([image_id])[image_id]

    def tags_of(self, image_ids: list[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {i: [] for i in image_ids}
        if not image_ids:
            return out
        with Session(self.engine) as session:
            rows = session.execute(select(ImageTagRow.image_id, ImageTagRow.tag).where(
                ImageTagRow.image_id.in_(image_ids)).order_by(ImageTagRow.auto, ImageTagRow.tag))  # fmt: skip
            for image_id, tag in rows:
                out[image_id].append(tag)
        return out

    def tag_counts(self, filters: SearchFilters, *, prefix: str = "", limit: int = 20) -> list[TagCount]:
        """The most used tags among the images `filters` lets through, those starting with `prefix` (autocomplete)."""
        where, params = filter_sql(filters, "i")
        sql = text(
            "SELECT t.tag, count(*) AS n, max(t.auto) AS auto "
            "FROM image_tags AS t JOIN images AS i ON i.id = t.image_id "
            f"WHERE t.tag LIKE :prefix ESCAPE '!' AND {where} GROUP BY t.tag ORDER BY n DESC, t.tag LIMIT :limit"
        )
        like = prefix.lower().replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
        with self.engine.connect() as conn:
            rows = conn.execute(sql, {**params, "prefix": like, "limit": limit}).all()
        return [TagCount(tag=r.tag, count=r.n, auto=bool(r.auto)) for r in rows]

    def rate(self, image_id: int, rating: int | None) -> None:
        """1-5, or None to clear."""
        self.store.get(image_id)
        with Session(self.engine) as session, session.begin():
            session.execute(ImageRow.__table__.update().where(ImageRow.id == image_id).values(rating=rating))
