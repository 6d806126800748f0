"""Runs `sidekey check` on every data key ending in .toml of every ConfigMap in the given
manifests. Errors point into the manifest: sidekey's `FILE:LINE: key: message` is rewritten to
`MANIFEST:LINE` when the TOML is a literal block scalar (`key: |`), whose lines map one to one.

Usage: check_configmaps.py SIDEKEY_BIN MANIFEST...; exit 0 when every config is valid, 1 when
one is not or a manifest cannot be read, 2 when there is no config at all. The last line says
how many.
"""

import os
import re
import subprocess
import sys
import tempfile

import yaml


def configs(path):
    """(name, key, text, first line of the text in the manifest or None) for each TOML."""
    with open(path, encoding="utf-8") as f:
        nodes = list(yaml.compose_all(f))
    for node in nodes:
        if not isinstance(node, yaml.MappingNode):
            continue
        doc = {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}
        kind = doc.get("kind")
        if not isinstance(kind, yaml.ScalarNode) or kind.value != "ConfigMap":
            continue
        meta = {k.value: v for k, v in doc["metadata"].value} if "metadata" in doc else {}
        name = meta["name"].value if "name" in meta else "?"
        data = doc.get("data")
        if not isinstance(data, yaml.MappingNode):
            continue
        for k, v in data.value:
            if k.value.endswith(".toml") and isinstance(v, yaml.ScalarNode):
                # A literal block's text starts on the line after the `|` indicator.
                first = v.start_mark.line + 2 if v.style == "|" else None
                yield name, k.value, v.value, first


def main(sidekey, paths):
    total = bad = unreadable = 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            try:
                found = list(configs(path))
            except (OSError, yaml.YAMLError) as e:
                print(f"{path}: cannot read: {e}")
                unreadable += 1
                continue
            for name, key, text, first in found:
                total += 1
                toml = os.path.join(tmp, f"{name}--{key}")
                with open(toml, "w", encoding="utf-8") as f:
                    f.write(text)
                # --no-files: the config names the pod's paths (its audit log directory, its
                # Secret files), which do not exist on the machine that lints it.
                r = subprocess.run([sidekey, "check", "--no-files", "-c", toml], capture_output=True, text=True)
                out = (r.stdout + r.stderr).rstrip("\n")

                def where(m):
                    if first is None:
                        return f"{path} (ConfigMap {name}, {key}):{m.group(1)}:"
                    return f"{path}:{first + int(m.group(1)) - 1}:"

                out = re.sub(re.escape(toml) + r":(\d+):", where, out)
                out = out.replace(toml, f"{path} (ConfigMap {name}, {key})")
                print(out)
                if r.returncode != 0:
                    bad += 1
    if total == 0 and not unreadable:
        print("no *.toml key in any ConfigMap")
        return 2
    note = f"; {unreadable} manifest(s) unreadable" if unreadable else ""
    print(f"{total - bad} of {total} config(s) valid{note}")
    return 1 if bad or unreadable else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
