"""AssetRegistry in-process: hooks and payloads, sidecars, idempotency, threads, path safety."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from comfyvn.assets import (
    AssetConfig,
    AssetConflict,
    AssetEmpty,
    AssetInputError,
    AssetNotFound,
    AssetPathError,
    AssetRegistry,
    AssetTooLarge,
)
from comfyvn.assets.demo import DEMO_ASSETS, load_demo
from comfyvn.core.event_log import SQLiteEventLog
from comfyvn.core.hook_bus import HookBus
from comfyvn.core.hook_specs import HOOK_SPECS

SIDECAR_KEYS = {"uid", "type", "path", "sha256", "bytes", "meta", "created_at", "updated_at"}


class Env:
    def __init__(self, base: Path, max_bytes: int = 1024 * 1024) -> None:
        self.base = base
        self.bus = HookBus(SQLiteEventLog(base / "events.sqlite3"))
        self.config = AssetConfig(
            root=(base / "assets").resolve(), db_path=base / "assets.sqlite3", max_bytes=max_bytes
        )
        self.registry = AssetRegistry(self.config, self.bus)
        self.root = self.config.root
        self.seen = 0

    def new_events(self) -> list[dict[str, Any]]:
        """Envelopes committed since the last call, each payload checked against its model."""
        self.bus.flush()
        items = self.bus.history(since=self.seen, limit=1000)
        for item in items:
            model = HOOK_SPECS[item["event"]].payload_model
            model.model_validate(item["data"])  # emitted payloads match the documented models
            assert item["data"]["hook_event"] == item["event"]
        if items:
            self.seen = items[-1]["seq"]
        return items

    def files(self) -> set[str]:
        return {p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()}

    def close(self) -> None:
        self.registry.close()
        self.bus.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_registration_emits_three_hooks_in_order(env: Env) -> None:
    change = env.registry.register_bytes(
        b"portrait-bytes", "character.portrait", {"character": "mira"}, filename="Mira Smile.PNG"
    )
    rec = change.record
    assert change.created and rec.uid == sha(b"portrait-bytes")[:32]
    assert rec.path == f"character/portrait/Mira_Smile-{rec.uid[:12]}.png"
    events = env.new_events()
    assert [e["event"] for e in events] == [
        "on_asset_sidecar_written",
        "on_asset_saved",
        "on_asset_registered",
    ]
    assert [e["seq"] for e in events] == [ev.seq for ev in change.events]
    for envelope in events:
        data = envelope["data"]
        assert data == {
            "uid": rec.uid,
            "type": "character.portrait",
            "path": rec.path,
            "meta": {"character": "mira"},
            "sidecar": rec.path + ".asset.json",
            "bytes": len(b"portrait-bytes"),
            "hook_event": envelope["event"],
            "timestamp": data["timestamp"],
            "resaved": False,
        }
    assert (env.root / rec.path).read_bytes() == b"portrait-bytes"


def test_sidecar_contents(env: Env) -> None:
    rec = env.registry.register_bytes(b"abc", "ui.icon", {"tags": ["a"]}).record
    sidecar = json.loads((env.root / rec.sidecar).read_text())
    assert set(sidecar) == SIDECAR_KEYS
    assert sidecar["uid"] == rec.uid and sidecar["type"] == "ui.icon"
    assert sidecar["path"] == rec.path and sidecar["sha256"] == sha(b"abc")
    assert sidecar["bytes"] == 3 and sidecar["meta"] == {"tags": ["a"]}
    assert sidecar["created_at"] == sidecar["updated_at"] == rec.created_at
    # Sidecars are rewritten on meta updates, never left half-written (no temp files remain).
    env.registry.update_meta(rec.uid, {"tags": ["a", "b"], "title": "Icon"})
    again = json.loads((env.root / rec.sidecar).read_text())
    assert again["meta"] == {"tags": ["a", "b"], "title": "Icon"}
    assert again["created_at"] == rec.created_at and again["updated_at"] > rec.created_at
    assert env.files() == {rec.path, rec.sidecar}


def test_identical_content_again_is_idempotent(env: Env) -> None:
    first = env.registry.register_bytes(b"same", "bg.scene", {"a": 1, "keep": True}, filename="x")
    env.new_events()
    again = env.registry.register_bytes(b"same", "bg.scene", {"a": 2, "b": 3}, filename="other.png")
    assert not again.created
    assert again.record.uid == first.record.uid and again.record.path == first.record.path
    assert again.record.meta == {"a": 2, "keep": True, "b": 3}
    assert env.registry.count() == 1
    events = env.new_events()
    # No new row, so no on_asset_registered; the sidecar is rewritten with the merged meta.
    assert [e["event"] for e in events] == ["on_asset_sidecar_written", "on_asset_saved"]
    assert all(e["data"]["resaved"] is True for e in events)
    assert events[1]["data"]["meta"] == {"a": 2, "keep": True, "b": 3}
    assert json.loads((env.root / first.record.sidecar).read_text())["meta"]["b"] == 3
    assert env.files() == {first.record.path, first.record.sidecar}


def test_same_content_with_another_type_conflicts(env: Env) -> None:
    env.registry.register_bytes(b"dup", "a.b")
    env.new_events()
    with pytest.raises(AssetConflict, match=r"type 'a\.b'"):
        env.registry.register_bytes(b"dup", "c.d")
    assert env.new_events() == []


def test_missing_file_is_restored_by_reregistration(env: Env) -> None:
    rec = env.registry.register_bytes(b"restore me", "fx")
    (env.root / rec.record.path).unlink()
    again = env.registry.register_bytes(b"restore me", "fx")
    assert (env.root / again.record.path).read_bytes() == b"restore me"


def test_update_meta_is_a_merge_patch(env: Env) -> None:
    rec = env.registry.register_bytes(b"m", "t", {"a": 1, "nested": {"x": 1, "y": 2}}).record
    env.new_events()
    change = env.registry.update_meta(rec.uid, {"a": None, "nested": {"y": None, "z": 3}})
    assert change.record.meta == {"nested": {"x": 1, "z": 3}}
    events = env.new_events()
    assert [e["event"] for e in events] == ["on_asset_sidecar_written", "on_asset_meta_updated"]
    updated = events[1]["data"]
    assert updated["changes"] == {"a": None, "nested": {"y": None, "z": 3}}
    assert updated["meta"] == {"nested": {"x": 1, "z": 3}}
    assert updated["path"] == rec.path and updated["sidecar"] == rec.sidecar
    assert env.registry.update_meta(rec.uid, {}).events == []  # empty patch: nothing to do
    with pytest.raises(AssetNotFound):
        env.registry.update_meta("0" * 32, {"a": 1})
    with pytest.raises(AssetInputError, match="tags"):
        env.registry.update_meta(rec.uid, {"tags": "not-a-list"})
    with pytest.raises(AssetInputError, match="JSON object"):
        env.registry.update_meta(rec.uid, ["x"])  # type: ignore[arg-type]


def test_remove_keeps_files_unless_asked(env: Env) -> None:
    keep = env.registry.register_bytes(b"keep", "t").record
    drop = env.registry.register_bytes(b"drop", "t").record
    env.new_events()
    env.registry.remove(keep.uid)
    env.registry.remove(drop.uid, delete_files=True)
    events = env.new_events()
    assert [(e["event"], e["data"]["deleted_files"]) for e in events] == [
        ("on_asset_removed", False),
        ("on_asset_removed", True),
    ]
    assert events[0]["data"]["path"] == keep.path
    assert env.files() == {keep.path, keep.sidecar}
    assert env.registry.find(keep.uid) is None and env.registry.count() == 0
    with pytest.raises(AssetNotFound):
        env.registry.remove(keep.uid)


def test_eight_threads_same_and_different_content(env: Env) -> None:
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            barrier.wait()
            for i in range(15):
                env.registry.register_bytes(b"shared content", "shared", {f"t{n}": i})
                env.registry.register_bytes(f"own {n} {i}".encode(), f"own.t{n}", {"i": i})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert env.registry.count() == 1 + 8 * 15  # no duplicates, no lost rows
    shared = env.registry.list(type="shared").items
    assert len(shared) == 1 and shared[0].meta == {f"t{n}": 14 for n in range(8)}
    for n in range(8):
        assert env.registry.list(type=f"own.t{n}", limit=100).total == 15
    events = env.new_events()
    registered = [e for e in events if e["event"] == "on_asset_registered"]
    saved = [e for e in events if e["event"] == "on_asset_saved"]
    assert len(registered) == 1 + 8 * 15
    assert len(saved) == 2 * 8 * 15 and sum(e["data"]["resaved"] for e in saved) == 8 * 15 - 1
    # One file and one sidecar per asset; nothing left in staging.
    assert len(env.files()) == 2 * (1 + 8 * 15)
    assert list((env.root / ".staging").iterdir()) == []


def test_register_file_copy_and_in_place(env: Env, tmp_path: Path) -> None:
    outside = tmp_path / "incoming.wav"
    outside.write_bytes(b"RIFF-audio")
    copied = env.registry.register_file(outside, "audio.sfx").record
    assert copied.path == f"audio/sfx/incoming-{copied.uid[:12]}.wav" and outside.exists()
    inside = env.root / "drop" / "map.json"
    inside.parent.mkdir(parents=True)
    inside.write_text('{"map": 1}')
    placed = env.registry.register_file("drop/map.json", "world.map", copy=False).record
    assert placed.path == "drop/map.json"
    assert (env.root / "drop" / "map.json.asset.json").is_file()
    same = env.registry.register_file(str(inside), "world.map", copy=False)  # absolute, inside
    assert not same.created and same.record.uid == placed.uid


def test_in_place_path_safety_writes_nothing(env: Env, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the root")
    (env.root / "escape.txt").symlink_to(secret)
    (env.root / "dir").mkdir()
    (env.root / "ok.txt").write_text("fine")
    (env.root / "ok.txt.asset.json").write_text("{}")
    (env.root / "empty.txt").write_bytes(b"")
    before = env.files()
    cases = {
        "../secret.txt": "must not contain '..'",
        "dir/../../secret.txt": "must not contain '..'",
        str(secret): "outside the assets root",
        "escape.txt": "resolves outside the assets root",
        "missing.txt": "no file at",
        "dir": "not a regular file",
        "ok.txt.asset.json": "sidecar",
        ".staging/x": "staging",
        "": "empty",
    }
    for raw, message in cases.items():
        with pytest.raises(AssetPathError, match=message):
            env.registry.register_file(raw, "t", copy=False)
    with pytest.raises(AssetEmpty):
        env.registry.register_file("empty.txt", "t", copy=False)
    assert env.files() == before and env.registry.count() == 0 and env.new_events() == []


def test_symlink_inside_root_is_registered_at_its_target(env: Env) -> None:
    (env.root / "real.png").write_bytes(b"png!")
    (env.root / "alias.png").symlink_to(env.root / "real.png")
    rec = env.registry.register_file("alias.png", "t", copy=False).record
    assert rec.path == "real.png"


def test_root_reached_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    bus = HookBus(SQLiteEventLog(tmp_path / "events.sqlite3"))
    config = AssetConfig(root=tmp_path / "alias" / "assets", db_path=tmp_path / "a.sqlite3")
    registry = AssetRegistry(config, bus)
    try:
        (tmp_path / "alias" / "assets" / "x.txt").write_text("x")
        rec = registry.register_file(tmp_path / "alias" / "assets" / "x.txt", "t", copy=False)
        assert rec.record.path == "x.txt"
        with pytest.raises(AssetPathError, match="outside the assets root"):
            registry.register_file(tmp_path / "alias" / "other.txt", "t", copy=False)
    finally:
        registry.close()
        bus.close()


@pytest.mark.parametrize(
    "bad", ["", "Character", "a..b", ".a", "a.", "a/b", "a b", "../x", "ä", "a" * 129, "-a"]
)
def test_bad_type_buckets_are_refused(env: Env, bad: str) -> None:
    with pytest.raises(AssetInputError):
        env.registry.register_bytes(b"x", bad)
    assert env.files() == set() and env.registry.count() == 0


def test_bad_meta_is_refused(env: Env) -> None:
    with pytest.raises(AssetInputError, match="JSON object"):
        env.registry.register_bytes(b"x", "t", ["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(AssetInputError, match="tags"):
        env.registry.register_bytes(b"x", "t", {"tags": [1, 2]})
    with pytest.raises(AssetInputError, match="plain JSON"):
        env.registry.register_bytes(b"x", "t", {"when": object()})
    with pytest.raises(AssetTooLarge, match="meta"):
        env.registry.register_bytes(b"x", "t", {"pad": "x" * 70_000})
    assert env.files() == set() and env.registry.count() == 0


def test_empty_and_oversize_content_writes_nothing(tmp_path: Path) -> None:
    small = Env(tmp_path, max_bytes=10)
    try:
        with pytest.raises(AssetEmpty):
            small.registry.register_bytes(b"", "t")
        with pytest.raises(AssetTooLarge, match="10"):
            small.registry.register_bytes(b"x" * 11, "t")
        big = tmp_path / "big.bin"
        big.write_bytes(b"x" * 11)
        with pytest.raises(AssetTooLarge):
            small.registry.register_file(big, "t")
        (small.root / "big.bin").write_bytes(b"x" * 11)
        with pytest.raises(AssetTooLarge):
            small.registry.register_file("big.bin", "t", copy=False)
        assert small.files() == {"big.bin"} and small.registry.count() == 0
        assert small.new_events() == []
        assert small.registry.register_bytes(b"x" * 10, "t").created
    finally:
        small.close()


def test_list_filters_and_paging(env: Env) -> None:
    reg = env.registry
    reg.register_bytes(b"1", "character.portrait", {"tags": ["Hero"], "title": "Mira smiling"})
    reg.register_bytes(b"2", "character.sprite", {"tags": ["hero", "walk"]})
    reg.register_bytes(b"3", "characters", {"title": "not a sub-bucket"})
    reg.register_bytes(b"4", "background", {"tags": ["night"]}, filename="harbor.png")
    page = reg.list()
    assert page.total == 4 and page.items[0].type == "background"  # newest first
    assert {r.type for r in reg.list(type="character").items} == {
        "character.portrait",
        "character.sprite",
    }
    assert reg.list(type="character.portrait").total == 1
    assert reg.list(tag="hero").total == 2 and reg.list(tag="HERO").total == 2
    assert reg.list(q="SMILING").items[0].type == "character.portrait"
    assert reg.list(q="harbor").total == 1  # the file name
    assert reg.list(type="character", tag="walk").total == 1
    paged = [reg.list(limit=1, offset=i).items[0].uid for i in range(4)]
    assert paged == [r.uid for r in page.items]
    assert reg.list(offset=10).items == [] and reg.list(offset=10).total == 4
    with pytest.raises(AssetInputError):
        reg.list(limit=0)
    with pytest.raises(AssetInputError):
        reg.list(type="Bad Type")


def test_state_survives_reopen_and_staging_is_cleared(tmp_path: Path) -> None:
    first = Env(tmp_path)
    rec = first.registry.register_bytes(b"persist", "t", {"k": "v"}).record
    first.close()
    leftover = tmp_path / "assets" / ".staging" / "stage-crashed.part"
    leftover.write_bytes(b"half an upload")
    second = Env(tmp_path)
    try:
        assert second.registry.get(rec.uid) == rec
        assert not leftover.exists()
    finally:
        second.close()


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, size = 8, (0, 0)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        if kind == b"IDAT":
            assert len(zlib.decompress(body)) == size[1] * (1 + 3 * size[0])
        pos += 12 + length
    return size


def test_demo_assets_are_valid_pngs_and_load_once(env: Env) -> None:
    assert load_demo(env.registry) == len(DEMO_ASSETS)
    assert load_demo(env.registry) == 0  # a restart adds nothing and emits nothing new
    items = env.registry.list(tag="demo").items
    assert len(items) == len(DEMO_ASSETS)
    for rec in items:
        assert rec.media_type == "image/png"
        width, height = _png_size((env.root / rec.path).read_bytes())
        assert width > 0 and height > 0
    assert len(env.new_events()) == 3 * len(DEMO_ASSETS)


def test_written_files_are_private(env: Env) -> None:
    rec = env.registry.register_bytes(b"mode", "t").record
    for rel in (rec.path, rec.sidecar):
        assert os.stat(env.root / rel).st_mode & 0o777 == 0o600


# -- nothing leaves the root, and a failed write leaves sidecar and row in agreement -------------
def test_in_place_resave_at_a_path_held_by_another_asset_conflicts(env: Env) -> None:
    first = env.registry.register_bytes(b"AAAA", "t", filename="a.png").record
    (env.root / first.path).unlink()  # its file went missing
    held = env.root / "t" / "b.png"
    held.write_bytes(b"BBBB")
    other = env.registry.register_file("t/b.png", "t", copy=False).record
    held.write_bytes(b"AAAA")  # now the first asset's content, at a path the other one holds
    sidecar_before = (env.root / other.sidecar).read_text()
    env.new_events()
    with pytest.raises(AssetConflict, match=f"already registered as asset {other.uid}"):
        env.registry.register_file("t/b.png", "t", copy=False)
    assert (env.root / other.sidecar).read_text() == sidecar_before  # not clobbered
    assert env.registry.get(first.uid).path == first.path
    assert env.new_events() == []


def test_a_bucket_folder_symlinked_out_of_the_root_is_never_written(
    env: Env, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (env.root / "evil").symlink_to(outside)
    with pytest.raises(AssetPathError, match="outside the assets root"):
        env.registry.register_bytes(b"escape", "evil.bucket", filename="x.png")
    with pytest.raises(AssetPathError, match="outside the assets root"):
        env.registry.register_bytes(b"escape", "evil", filename="x.png")
    assert list(outside.iterdir()) == [] and env.registry.count() == 0
    assert env.new_events() == []


def test_an_asset_folder_swapped_for_a_symlink_is_not_followed(env: Env, tmp_path: Path) -> None:
    rec = env.registry.register_bytes(b"victim", "pics", filename="v.png").record
    env.new_events()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    decoy = {rec.path.split("/", 1)[1]: b"not ours", rec.sidecar.split("/", 1)[1]: b"{}"}
    for name, data in decoy.items():
        (outside / name).write_bytes(data)
    (env.root / "pics").rename(tmp_path / "moved")
    (env.root / "pics").symlink_to(outside)
    with pytest.raises(AssetPathError, match="outside the assets root"):
        env.registry.update_meta(rec.uid, {"x": 1})
    with pytest.raises(AssetPathError, match="outside the assets root"):
        env.registry.remove(rec.uid, delete_files=True)
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == decoy
    assert env.registry.get(rec.uid).meta == {} and env.new_events() == []


def _failing(exc: BaseException) -> Any:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise exc

    return fail


def test_a_row_that_cannot_be_written_keeps_the_old_sidecar(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    rec = env.registry.register_bytes(b"meta", "t", {"v": 1}).record
    sidecar = env.root / rec.sidecar
    before = sidecar.read_text()
    env.new_events()
    monkeypatch.setattr(env.registry._store, "upsert", _failing(sqlite3.OperationalError("full")))
    with pytest.raises(sqlite3.OperationalError):
        env.registry.update_meta(rec.uid, {"v": 2})
    assert sidecar.read_text() == before
    with pytest.raises(sqlite3.OperationalError):
        env.registry.register_bytes(b"meta", "t", {"v": 3})  # a resave
    assert sidecar.read_text() == before
    assert env.registry.get(rec.uid).meta == {"v": 1} and env.new_events() == []
    assert list((env.root / ".staging").iterdir()) == []


def test_remove_that_cannot_finish_changes_nothing(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    rec = env.registry.register_bytes(b"stay", "t").record
    env.new_events()
    before = env.files()
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        if str(src).endswith(".asset.json"):
            raise PermissionError(13, "Permission denied")
        real_replace(src, dst)

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if str(path).endswith(".asset.json"):
            raise PermissionError(13, "Permission denied")
        real_unlink(path, *args, **kwargs)

    real_unlink = os.unlink
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(PermissionError):
        env.registry.remove(rec.uid, delete_files=True)
    monkeypatch.undo()
    assert env.files() == before and env.registry.find(rec.uid) is not None

    monkeypatch.setattr(env.registry._store, "delete", _failing(sqlite3.OperationalError("ro")))
    with pytest.raises(sqlite3.OperationalError):
        env.registry.remove(rec.uid, delete_files=True)
    assert env.files() == before and env.registry.find(rec.uid) is not None
    assert env.new_events() == []
    monkeypatch.undo()
    env.registry.remove(rec.uid, delete_files=True)
    assert env.files() == set() and not any(env.root.rglob(".*removing*"))


def test_an_unreadable_file_under_the_root_is_a_path_error(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    (env.root / "locked.bin").write_bytes(b"locked")
    real_open = os.open

    def deny(path: Any, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith("locked.bin"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)  # as root, chmod 000 would not stop the read
    with pytest.raises(AssetPathError, match=r"cannot read 'locked\.bin': Permission denied"):
        env.registry.register_file("locked.bin", "t", copy=False)
    assert env.registry.count() == 0


def test_an_offset_beyond_sqlite_integers_is_an_input_error(env: Env) -> None:
    with pytest.raises(AssetInputError, match="offset"):
        env.registry.list(offset=2**63)
