"""The model's lifecycle, outside the nightly job: labelled image sets (``labelled``), their
retrieval metrics (``metrics``, ``evaluate``), fine-tuning (``finetune``) and promotion of a
candidate checkpoint (``promote``); ``commands`` makes them ``lookalike`` subcommands.

They use the Spark-free core (``lookalike.core``) only, so a GPU box without Spark runs them.
"""
