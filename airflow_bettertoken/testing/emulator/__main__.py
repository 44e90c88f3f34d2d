"""``python -m airflow_bettertoken.testing.emulator``: serve the emulator until interrupted."""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn

from airflow_bettertoken.testing.emulator.app import EmulatorConfig, create_app
from airflow_bettertoken.testing.emulator.service_spec import FIELDS, SIZES


def _size_pair(text: str) -> tuple[str, str]:
    requested, sep, returned = text.partition("=")
    if not sep or requested not in SIZES or "x" not in returned:
        raise argparse.ArgumentTypeError(
            f"expected REQUESTED=WxH with REQUESTED one of {SIZES}, got {text!r}"
        )
    return requested, returned


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bettertoken-emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("BETTERTOKEN_EMULATOR_API_KEY"),
        help="the only key accepted (default: $BETTERTOKEN_EMULATOR_API_KEY, else any key); "
        "the variable keeps a key out of the process list",
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each edit takes")
    parser.add_argument(
        "--size-map",
        type=_size_pair,
        action="append",
        default=[],
        metavar="REQUESTED=WxH",
        help="return other pixels than requested, e.g. 1024x1024=1000x1000 (repeatable)",
    )
    parser.add_argument(
        "--accept-unknown-fields",
        action="store_true",
        help="accept form fields the service's page does not list "
        "(by default they get a 400, as from a strict server)",
    )
    parser.add_argument(
        "--refuse-field",
        action="append",
        default=[],
        choices=sorted(FIELDS),
        metavar="FIELD",
        help="refuse this listed field as unknown, to play a stricter gateway: response_format is what "
        "OpenAI refuses for gpt-image models (repeatable)",
    )
    args = parser.parse_args(argv)
    config = EmulatorConfig(
        api_key=args.api_key,
        latency=args.latency,
        size_map=dict(args.size_map),
        strict_fields=not args.accept_unknown_fields,
        refused_fields=tuple(args.refuse_field),
    )
    print(f"BetterToken emulator on http://{args.host}:{args.port}/v1", flush=True)
    # One line per request (method, path, status, latency, images); never a key or a body.
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.WARNING)
    logging.getLogger("bettertoken.emulator").setLevel(logging.INFO)
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
