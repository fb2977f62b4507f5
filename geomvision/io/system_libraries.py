"""Are the system libraries Open3D needs installed? Answered in ~0.1 s, without importing Open3D.

Open3D's wheel links against system libraries that a bare Debian lacks (``libEGL.so.1`` from ``libegl1``,
``libusb-1.0.so.0`` from ``libusb-1.0-0``, ...). Importing it then fails with an ``ImportError`` only when
first needed, which used to be the very end of a reconstruction. :func:`open3d_library_problem` loads
Open3D's shared objects with ``dlopen`` in a child process (a failure cannot hurt this one) and names
the missing Debian packages.

``python -m geomvision.io.system_libraries`` prints the answer and exits 1 when something is missing
(CI runs it after ``install.sh``); it also lists every "not found" line of ``ldd``.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["DEBIAN_PACKAGES", "open3d_shared_objects", "missing_libraries", "open3d_library_problem"]

#: Shared-library soname -> Debian package providing it (those Open3D's wheel links against).
DEBIAN_PACKAGES: dict[str, str] = {
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libGLX.so.0": "libglx0",
    "libGLdispatch.so.0": "libglvnd0",
    "libOpenGL.so.0": "libopengl0",
    "libX11.so.6": "libx11-6",
    "libxcb.so.1": "libxcb1",
    "libXau.so.6": "libxau6",
    "libXdmcp.so.6": "libxdmcp6",
    "libudev.so.1": "libudev1",
    "libusb-1.0.so.0": "libusb-1.0-0",
    "libidn2.so.0": "libidn2-0",
    "libunistring.so.2": "libunistring2",
    "libbsd.so.0": "libbsd0",
    "libmd.so.0": "libmd0",
    "libgomp.so.1": "libgomp1",
    "libstdc++.so.6": "libstdc++6",
    "libgcc_s.so.1": "libgcc-s1",
}

_SONAME = re.compile(r"(lib[\w.+-]*?\.so(?:\.\d+)*)")


def open3d_shared_objects() -> list[Path]:
    """Open3D's own shared objects (main library first), found without importing it; [] if absent."""
    spec = importlib.util.find_spec("open3d")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("libOpen3D.so*")) + sorted(folder.glob("pybind*.so"))
    return found + sorted(folder.glob("cpu/pybind*.so"))


def missing_libraries(shared_object: Path) -> list[str]:
    """Sonames ``ldd`` reports as "not found" or unusable for ``shared_object`` ([] without ldd)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    proc = subprocess.run([ldd, str(shared_object)], capture_output=True, text=True, timeout=30)
    names = [line.split()[0] for line in proc.stdout.splitlines() if "not found" in line]
    if proc.returncode != 0:  # e.g. "error while loading shared libraries: /x/libEGL.so.1: file too short"
        names += [Path(m).name for m in _SONAME.findall(proc.stderr)]
    return sorted(set(names) - {shared_object.name})


def _packages(names: list[str]) -> list[str]:
    return sorted({DEBIAN_PACKAGES.get(n, f"the package providing {n}") for n in names})


@functools.cache
def open3d_library_problem() -> str | None:
    """One line naming what keeps Open3D from loading and the Debian packages to install, or None.

    None also when Open3D is not installed at all (the callers then do without it).
    """
    objects = open3d_shared_objects()
    if not objects:
        return None
    code = "import ctypes, sys\nfor p in sys.argv[1:]: ctypes.CDLL(p)\n"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, *map(str, objects)], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode == 0:
        return None
    error = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    names = {Path(m).name for m in _SONAME.findall(error)} - {o.name for o in objects}
    for shared_object in objects:
        names |= set(missing_libraries(shared_object))
    names.discard("libOpen3D.so")
    if not names:
        return f"Open3D cannot load its libraries ({error})"
    packages = _packages(sorted(names))
    return (
        f"Open3D cannot load {', '.join(sorted(names))} ({error.split(': ', 1)[-1]}); "
        f"install the Debian package(s): apt-get install {' '.join(packages)}"
    )


def main() -> int:
    problem = open3d_library_problem()
    objects = open3d_shared_objects()
    if not objects:
        print("open3d is not installed")
        return 1
    for shared_object in objects:
        for name in missing_libraries(shared_object):
            print(f"{shared_object.name}: {name} not found ({DEBIAN_PACKAGES.get(name, '?')})")
    print(problem or f"Open3D's libraries all load ({', '.join(o.name for o in objects)})")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
