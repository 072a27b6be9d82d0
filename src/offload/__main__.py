"""``python -m offload``: Ctrl-C while the CLI is imported ends it quietly, as later on."""

try:
    from offload.cli import main
except KeyboardInterrupt:
    raise SystemExit(130) from None

raise SystemExit(main())
