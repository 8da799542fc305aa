"""Serve a gallery index over HTTP: the student, the index and the optional teacher are loaded once.

    python -m dcd_ext.serve --index photos.index.safetensors --port 8000
    python -m dcd_ext.serve --index photos.index.safetensors --teacher ./vilt --host 0.0.0.0

Routes: POST /search, GET /items/{id}, GET /health and GET / (a web page); see docs/serving.md.
Concurrent queries arriving within --batch-window-ms share one student pass and one top-k call. Needs the
``serve`` extra (pip install "dcd_ext[serve]").
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from typing import Optional, Sequence

from .cli import (add_device_argument, add_teacher_arguments, check_folder_exists, check_teacher_argument,
                  load_teacher_from_args, make_parser, non_negative_int, positive_int, resolve_device,
                  run_command_line)
from .serving.index_file import load_index
from .serving.query import check_student_fits
from .serving.shards import merge_indexes

SERVE_EXTRA = 'the service needs starlette and uvicorn: pip install "dcd_ext[serve]"'


def non_negative_float(text: str) -> float:
    import argparse

    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0; got {text}")
    return value


def build_parser():
    p = make_parser("python -m dcd_ext.serve", __doc__.split("\n\n")[0])
    p.add_argument("--index", required=True, action="append",
                   help="index file written by python -m dcd_ext.index; repeat it to serve the shards of one gallery")
    p.add_argument("--student", help="student folder (default: the one recorded in the index)")
    p.add_argument("--allow-student-mismatch", action="store_true",
                   help="serve even if the student is not the one that built the index (scores would be meaningless)")
    add_teacher_arguments(p, purpose="cross-encoder teacher for re-ranking (requests ask for it with \"rerank\": N)")
    add_device_argument(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=non_negative_int, default=8000, help="port to listen on (0: any free port)")
    p.add_argument("--batch-window-ms", type=non_negative_float, default=3.0,
                   help="how long the first query of a batch waits for others to share its model call")
    p.add_argument("--max-batch", type=positive_int, default=64, help="queries per model call (1: no batching)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    return p


def serve_modules():
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise ValueError(f"{SERVE_EXTRA} ({e})") from None
    return uvicorn


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections of such sockets, and without it
    # a kept-alive connection stalls each response ~40 ms (Nagle's algorithm against the client's delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"port: cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def draining_server(uvicorn, config):
    """uvicorn's server, except that SIGTERM ends it with status 0 once in-flight requests are answered
    (uvicorn drains, then re-raises the signal, which would end the process as killed)."""

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if sig == signal.SIGTERM and isinstance(captured, list) and sig in captured:
                captured.remove(sig)

    return DrainingServer(config)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .service.engine import SearchEngine
    from .students import load_student, student_fingerprint

    args = build_parser().parse_args(argv)
    uvicorn = serve_modules()
    from .service.app import build_app

    index = merge_indexes([load_index(path) for path in args.index], args.index)
    index_name = " + ".join(args.index)
    student_dir = args.student or index.student
    if not student_dir:
        raise ValueError(f"student: the index {index_name} records no student; give --student")
    check_folder_exists(student_dir)
    check_teacher_argument(args)
    sock = listening_socket(args.host, args.port)  # a taken port fails before minutes of loading
    device = resolve_device(args.device)
    student = load_student(student_dir, device)
    note = check_student_fits(index, index_name, student, student_dir, args.allow_student_mismatch)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    teacher = load_teacher_from_args(args, device) if args.teacher else None
    engine = SearchEngine(index, student, teacher, device, index_name=index_name, student_dir=student_dir,
                          teacher_name=args.teacher, fingerprint=student_fingerprint(student))
    app = build_app(engine, args.batch_window_ms, args.max_batch)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = sock.getsockname()[:2]
    print(f"serving {len(index)} {index.modality}s ({engine.query_modality} queries) on http://{host}:{port} "
          f"(device {device}, teacher {args.teacher or 'none'}, batch window {args.batch_window_ms} ms, "
          f"max batch {args.max_batch})", flush=True)
    config = uvicorn.Config(app, log_level="info", access_log=args.access_log, timeout_graceful_shutdown=30,
                            lifespan="on")
    draining_server(uvicorn, config).run(sockets=[sock])
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_command_line(main))
