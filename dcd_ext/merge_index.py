"""Merge the shards of one gallery (index files built with distinct ``--id-offset``) into one index file.

    python -m dcd_ext.merge_index --index shard0.idx --index shard1.idx --out gallery.idx

The shards must embed the same modality with the same student at the same width, and their ids must not
overlap; rows keep their ids, in the order of the ``--index`` flags. ``search`` can also read the shards
together without merging (``--index`` repeated).
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from .cli import make_parser, run_command_line
from .existing_output import add_overwrite_argument, check_new_file
from .serving.index_file import load_index, save_index
from .serving.shards import merge_indexes


def build_parser():
    p = make_parser("python -m dcd_ext.merge_index", __doc__.split("\n\n")[0])
    p.add_argument("--index", required=True, action="append", help="a shard's index file (repeat for each shard)")
    p.add_argument("--out", required=True, help="merged index file to write; an existing file is refused unless "
                                                "--overwrite")
    add_overwrite_argument(p, "replace an existing --out file")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_new_file(args.out, args.overwrite)
    index = merge_indexes([load_index(path) for path in args.index], args.index)
    save_index(index, args.out)
    print(f"wrote {args.out}: {len(index)} {index.modality} embeddings of width {index.embed_dim} from "
          f"{len(args.index)} shards, student {index.student}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command_line(main))
