"""Running a batch: the engine (generate -> download -> verify -> store -> record), the
ledger, the cost guard and the runner."""
