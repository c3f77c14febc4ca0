#!/usr/bin/python3
"""Replaces the text between <!-- NAME:begin --> and <!-- NAME:end --> in a README
with the contents of generated markdown files (NAME is "compare" unless --block
says otherwise). Touches nothing else; if the markers are absent (or out of
order), prints a message and changes nothing.

usage: scripts/update_readme.py TABLE.md [TABLE2.md ...] [--readme README.md] [--block NAME]
"""
import sys
from pathlib import Path

def main(argv):
    readme = Path("README.md")
    block = "compare"
    tables = []
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--readme":
            if not args:
                print("update_readme: --readme needs a path", file=sys.stderr)
                return 2
            readme = Path(args.pop(0))
        elif a == "--block":
            if not args:
                print("update_readme: --block needs a name", file=sys.stderr)
                return 2
            block = args.pop(0)
        elif a in ("-h", "--help"):
            print(__doc__.strip())
            return 0
        else:
            tables.append(Path(a))
    if not tables:
        print("update_readme: give at least one markdown file (see --help)", file=sys.stderr)
        return 2
    if not readme.is_file():
        print(f"update_readme: {readme} not found; nothing changed")
        return 0
    BEGIN = f"<!-- {block}:begin -->"
    END = f"<!-- {block}:end -->"
    text = readme.read_text(encoding="utf-8")
    b = text.find(BEGIN)
    e = text.find(END, b + len(BEGIN)) if b >= 0 else -1
    if b < 0 or e < 0:
        print(f"update_readme: markers {BEGIN} ... {END} not found in {readme}; nothing changed")
        return 0
    body = "\n\n".join(t.read_text(encoding="utf-8").strip() for t in tables)
    new = text[: b + len(BEGIN)] + "\n" + body + "\n" + text[e:]
    if new != text:
        readme.write_text(new, encoding="utf-8")
        print(f"update_readme: {readme} updated from {', '.join(map(str, tables))}")
    else:
        print(f"update_readme: {readme} already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
