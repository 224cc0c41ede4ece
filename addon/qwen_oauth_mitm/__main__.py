"""``python -m qwen_oauth_mitm`` runs the ``qwen-oauth`` CLI."""

from qwen_oauth_mitm.cli import main

raise SystemExit(main())
