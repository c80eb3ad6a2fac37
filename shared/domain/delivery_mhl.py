"""ASC MHL v2.0 hash lists for deliveries: the `ascmhl/` history beside a delivery's manifest.json.

A delivery folder (`deliveries/<id>/`) is the root of an ASC MHL history with one generation: the
hash list `ascmhl/0001_<id>_<date>_<time>Z.mhl` (every delivered file's size and xxh64, each
folder's content and structure hash, and the root's) and the chain `ascmhl/ascmhl_chain.xml` (the
generation's C4 id), so that `ascmhl-debug verify <folder>` on a downloaded copy proves every file
arrived as it left.

Written here rather than with the `ascmhl` package because that package cannot be installed beside
the worker's libraries: every ascmhl from 0.9.1 to 1.2 requires Click ~=7.0 or ~=8.1.7 (below
8.2), every huggingface-hub that diffusers 0.42 and transformers 5.24 accept (>= 1.32) requires
click >= 8.4.2, and the two older releases with no upper bound (0.8.1, 0.9) crash on import with
Click 8.2 or newer. The tests check what this module writes with the real ascmhl 1.2 (its own
virtual environment): `ascmhl-debug verify`, and its XSD schemas.

Format (ASC MHL specification v2.0, as ascmhl 1.2 writes and reads it): file hashes are xxh64 as
16 hex digits; a folder's content hash is the xxh64 of its children's content hashes (as bytes,
sorted by their hex), its structure hash the xxh64 of the sorted xxh64s of each child's name
followed by its content (file) or structure (folder) hash; the chain names each generation file
with its C4 id (SHA-512 in base 58, "c4" and 88 characters).
"""

import hashlib
import posixpath
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from xml.etree import ElementTree

import xxhash

FOLDER = "ascmhl"
CHAIN_FILE = "ascmhl_chain.xml"
HASH_FORMAT = "xxh64"
NAMESPACE = "urn:ASC:MHL:v2.0"
CHAIN_NAMESPACE = "urn:ASC:MHL:DIRECTORY:v2.0"
# What ascmhl ignores in a folder by default, written down so every reader ignores the same.
IGNORE_PATTERNS = (".DS_Store", FOLDER, FOLDER + "/")
C4_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


@dataclass(frozen=True)
class HashedFile:
    """One file of the history: its path from the root (POSIX, no leading slash), size and xxh64."""

    path: str
    size: int
    xxh64: str


def xxh64(data: bytes) -> str:
    """The xxh64 of `data` as ASC MHL writes it: 16 lowercase hex digits."""
    return xxhash.xxh64(data).hexdigest()


def c4_id(data: bytes) -> str:
    """The C4 id of `data` (SMPTE ST 2114): its SHA-512 in base 58, "c4" and 88 characters."""
    number, digits = int.from_bytes(hashlib.sha512(data).digest(), "big"), ""
    while number:
        number, rest = divmod(number, 58)
        digits = C4_ALPHABET[rest] + digits
    return "c4" + digits.rjust(88, C4_ALPHABET[0])


def generation_name(root_name: str, created: datetime, number: int = 1) -> str:
    """The hash list's file name: `0001_<root folder>_<YYYY-MM-DD>_<HHMMSS>Z.mhl` (UTC)."""
    return f"{number:04d}_{root_name}_{created.astimezone(timezone.utc):%Y-%m-%d_%H%M%S}Z.mhl"


def _date(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def _list_hash(hex_hashes: list[str]) -> str:
    return xxh64(b"".join(bytes.fromhex(h) for h in sorted(hex_hashes)))


def _directory_hashes(files: list[HashedFile]) -> dict[str, tuple[str, str]]:
    """(content, structure) hash of every folder, the root "" included, from the files' hashes."""
    folders: dict[str, list[tuple[str, str, str]]] = {"": []}  # folder -> [(name, content, structure)]
    for file in files:
        parent = posixpath.dirname(file.path)
        while parent not in folders:  # each ancestor folder, up to one already known
            folders[parent] = []
            parent = posixpath.dirname(parent)
    for file in files:
        folders[posixpath.dirname(file.path)].append((posixpath.basename(file.path), file.xxh64, file.xxh64))
    hashes = {}
    for folder in sorted(folders, key=lambda f: -f.count("/") - (f != "")):  # deepest first, the root last
        children = folders[folder]
        content = _list_hash([c for _, c, _ in children])
        structure = _list_hash([xxh64(name.encode() + bytes.fromhex(s)) for name, _, s in children])
        hashes[folder] = (content, structure)
        if folder:
            folders[posixpath.dirname(folder)].append((posixpath.basename(folder), content, structure))
    return hashes


def _element(parent: ElementTree.Element, tag: str, text: str | None = None, **attributes) -> ElementTree.Element:
    element = ElementTree.SubElement(parent, tag, {k: v for k, v in attributes.items() if v is not None})
    element.text = text
    return element


def _hash_pair(parent: ElementTree.Element, tag: str, content: str, structure: str, hashdate: str) -> None:
    holder = _element(parent, tag)
    _element(_element(holder, "content"), HASH_FORMAT, content, hashdate=hashdate)
    _element(_element(holder, "structure"), HASH_FORMAT, structure, hashdate=hashdate)


def _xml(root: ElementTree.Element) -> bytes:
    ElementTree.indent(root, space="  ")
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root, encoding="utf-8") + b"\n"


def hash_list(files: list[HashedFile], *, created: datetime, tool_version: str, comment: str | None = None) -> bytes:
    """The generation file (the .mhl hash list) of `files`, hashed in place at `created`."""
    if not files:
        raise ValueError("an ASC MHL hash list needs at least one file")
    stamp = _date(created)
    root = ElementTree.Element("hashlist", {"version": "2.0", "xmlns": NAMESPACE})
    # 1. who made it, and how
    creator = _element(root, "creatorinfo")
    _element(creator, "creationdate", stamp)
    _element(creator, "hostname", socket.gethostname() or "localhost")
    _element(creator, "tool", "tierflow", version=tool_version)
    if comment:
        _element(creator, "comment", comment)
    process = _element(root, "processinfo")
    _element(process, "process", "in-place")
    folders = _directory_hashes(files)
    _hash_pair(process, "roothash", *folders[""], stamp)
    ignore = _element(process, "ignore")
    for pattern in IGNORE_PATTERNS:
        _element(ignore, "pattern", pattern)
    # 2. every file, then every folder below the root
    hashes = _element(root, "hashes")
    for file in sorted(files, key=lambda f: f.path):
        entry = _element(hashes, "hash")
        _element(entry, "path", file.path, size=str(file.size))
        _element(entry, HASH_FORMAT, file.xxh64, action="original", hashdate=stamp)
    for folder in sorted(f for f in folders if f):
        entry = _element(hashes, "directoryhash")
        _element(entry, "path", folder)
        for part in ("content", "structure"):
            _element(_element(entry, part), HASH_FORMAT, folders[folder][part == "structure"], hashdate=stamp)
    return _xml(root)


def chain(generations: list[tuple[str, bytes]]) -> bytes:
    """The chain file (`ascmhl_chain.xml`) of the generation files (name, content), first one first."""
    root = ElementTree.Element("ascmhldirectory", {"xmlns": CHAIN_NAMESPACE})
    for number, (name, content) in enumerate(generations, start=1):
        entry = _element(root, "hashlist", sequencenr=str(number))
        _element(entry, "path", name)
        _element(entry, "c4", c4_id(content))
    return _xml(root)
