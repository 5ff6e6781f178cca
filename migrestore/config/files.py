"""Config files on disk: the only module of the config package that does I/O.

Rules:

1. Every file-system problem is a ``ConfigError`` (exit 78) naming the file; no OSError
   or UnicodeError leaves this module.
2. Files are opened once, without following into FIFOs or devices (``O_NONBLOCK``, a
   regular file only), and read up to ``MAX_BYTES``; text is UTF-8 with no NUL byte.
3. When ``require_secure`` (default: running as root), the config file, a mig-parted
   file it references and the hook executables must be owned by root, not writable by
   group or others, and in directories only root can change, including the directory
   of every symlink on the way to them: the daemon runs as root. (At run time hooks are
   checked again and executed from the descriptor checked: ``proc.open_trusted``.)
"""

from __future__ import annotations

import os
import stat
from typing import List, NoReturn, Optional

from migrestore.config.parsing import parse_text
from migrestore.config.yaml_strict import one_line
from migrestore.errors import ConfigError
from migrestore.model import Config

MAX_BYTES = 1 << 20  # a config is a few KiB; anything near this is not a config


def _read_text(path: str, secure: bool, missing_fix: str = "") -> str:
    """The text of a config file, with every file-system problem as a ConfigError."""

    def fail(problem: str, fix: str = "") -> NoReturn:
        raise ConfigError(path, None, "", problem, fix)

    try:
        link = os.lstat(path)
    except FileNotFoundError:
        fail(
            "does not exist",
            missing_fix or "create it (see /usr/share/doc/migrestore/examples) or pass -c PATH",
        )
    except PermissionError:
        fail("cannot be reached: permission denied", "run as root")
    except (OSError, ValueError) as exc:
        fail(f"cannot be examined: {_os_reason(exc)}")
    if stat.S_ISLNK(link.st_mode):
        try:
            os.stat(path)
        except FileNotFoundError:
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            fail(f"is a dangling symlink (to {target})", "fix the link or replace it with the file")
        except OSError as exc:
            fail(f"cannot be followed: {_os_reason(exc)}")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        fail("cannot be read: permission denied", f"chmod 0644 {path}, or run as root")
    except IsADirectoryError:
        fail("is a directory, not a config file", "pass the file's path")
    except OSError as exc:
        fail(f"cannot be opened: {_os_reason(exc)}")
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            fail("is a directory, not a config file", "pass the file's path")
        if not stat.S_ISREG(info.st_mode):
            fail("is not a regular file", "pass the path of a plain file")
        if secure:
            fix = f"chown root:root {path} && chmod 0644 {path}"
            if info.st_uid != 0:
                fail(f"is owned by uid {info.st_uid}, not root: refusing to use it", fix)
            if info.st_mode & 0o022:
                mode = stat.S_IMODE(info.st_mode)
                fail(f"is writable by group or others (mode {mode:04o}): refusing to use it", fix)
            unsafe = _unsafe_directory(path)
            if unsafe is not None:
                fail(
                    f"{unsafe}, so another user could put another file in its place: "
                    "refusing to use it",
                    "keep it in a root-owned directory such as /etc",
                )
        if info.st_size > MAX_BYTES:
            fail(f"is {info.st_size} bytes; a config is at most {MAX_BYTES} bytes (1 MiB)")
        chunks: List[bytes] = []
        size = 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        fail(f"cannot be read: {_os_reason(exc)}")
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        fail(f"is larger than {MAX_BYTES} bytes (1 MiB)")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ConfigError(
            path,
            data.count(b"\n", 0, nul) + 1,
            "",
            "contains a NUL byte: binary data, or UTF-16 text",
            "save the config as UTF-8 text",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            path,
            data.count(b"\n", 0, exc.start) + 1,
            "",
            f"is not valid UTF-8 (byte 0x{data[exc.start]:02x})",
            "save the config as UTF-8 text",
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror)
    return one_line(exc)


def _unsafe_directory(path: str) -> Optional[str]:
    """The first directory that someone other than root could use to put another file
    in ``path``'s place, or None: the directories above the file (symlinks resolved),
    and the directories holding each symlink met on the way to it (a link in a user's
    directory is the user's to re-point, whatever it points at today). Such a directory
    is not owned by root, or group or others can write it without the sticky bit (a
    sticky /tmp is safe: only the owner of a root-owned file can rename or remove it)."""
    found = _unsafe_above(os.path.dirname(os.path.realpath(path)))
    if found is not None:
        return found
    current = "/"
    for part in os.path.abspath(path).split("/"):
        if not part:
            continue
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            found = _unsafe_above(current)
            if found is not None:
                return f"{found} (it holds the symlink {candidate})"
        current = os.path.realpath(candidate)
    return None


def _unsafe_above(directory: str) -> Optional[str]:
    current = directory
    while True:
        try:
            info = os.stat(current)
        except OSError:
            return None  # the file's own check reports what is missing
        if info.st_uid != 0:
            return f"{current} is owned by uid {info.st_uid}"
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            return (
                f"{current} is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
            )
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def _check_hook_executable(config: Config) -> None:
    """Hooks run as root: refuse executables that someone other than root could change."""
    for i, hook in enumerate(config.hooks):
        exe = hook.argv[0]
        key = f"hooks.post-apply[{i}].argv[0]"
        fix = f"chown root:root {exe} && chmod 0755 {exe}"

        def fail(
            problem: str, fix: str = fix, key: str = key, line: Optional[int] = hook.line
        ) -> NoReturn:
            raise ConfigError(config.path, line, key, problem, fix)

        try:
            info = os.stat(exe)
        except FileNotFoundError:
            fail(f"hook executable {exe} does not exist", "install it, or remove the hook")
        except OSError as exc:
            fail(f"hook executable {exe} cannot be examined: {_os_reason(exc)}")
        if not stat.S_ISREG(info.st_mode):
            fail(f"hook executable {exe} is not a regular file", "point argv[0] at the program")
        if info.st_uid != 0:
            fail(f"hook executable {exe} is owned by uid {info.st_uid}, not root")
        if info.st_mode & 0o022:
            mode = stat.S_IMODE(info.st_mode)
            fail(f"hook executable {exe} is writable by group or others (mode {mode:04o})")
        if not info.st_mode & 0o111:
            fail(f"hook executable {exe} is not executable", f"chmod 0755 {exe}")
        unsafe = _unsafe_directory(exe)
        if unsafe is not None:
            fail(
                f"hook executable {exe}: {unsafe}, so another user could replace the "
                "program that runs as root",
                "keep hooks in a root-owned directory such as /usr/local/sbin",
            )


def load(
    path: str, select: Optional[str] = None, *, require_secure: Optional[bool] = None
) -> Config:
    """Read and parse a config file, and any mig-parted file it references.

    ``require_secure`` (default: running as root) refuses config files and hook
    executables that are not owned by root or that group or others can write: the
    daemon runs them as root.

    Raises:
        ConfigError: a missing, unreadable, oversized, binary, insecure or invalid file.
    """
    secure = os.geteuid() == 0 if require_secure is None else require_secure
    text = _read_text(path, secure)
    config = parse_text(
        text,
        path,
        select,
        lambda ref: _read_text(
            ref, secure, "install the mig-parted config, or fix mig-parted.file"
        ),
    )
    if secure:
        _check_hook_executable(config)
    return config
