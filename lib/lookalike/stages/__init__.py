"""The nightly job's stages, one module each, in the order ``lookalike.layout.STAGES`` runs
them: ``ingest``, ``embed``, ``index``, ``duplicates``, ``neighbors``, ``mismatches``,
``report``, ``publish``. Each holds its transforms and one ``run(spark, ctx)`` that reads what
the stages before it wrote, writes its own output and returns its counts.
"""
