"""Evaluation: scoring checkpoints on processed data (``scoring``), predictions files and the outputs computed from
them alone (``predictions``, ``outputs``, ``report``, ``plots``, ``rescore``, ``ensemble``), the lexical floor's
texts, and leave-one-source-out tables. The paper's entry points in ``test/`` call into it."""
