# The verbs a newcomer needs. Every target bootstraps .venv by itself.
.PHONY: run test lint format bench bench-detection soak migrate shell

run:  ## Prism, a worker with the beat, and the demo fleet's simulator (SIM=0: no simulator)
	scripts/run $(if $(filter 0 false no off,$(SIM)),--no-sim)

test:  ## Run the whole test suite (PostgreSQL: $$DATABASE_URL or a throwaway cluster)
	scripts/test

lint:  ## Ruff lint and format check
	scripts/bootstrap && .venv/bin/ruff check . && .venv/bin/ruff format --check .

format:
	scripts/bootstrap && .venv/bin/ruff format . && .venv/bin/ruff check --fix .

bench:  ## Benchmarks (see bench/README.md)
	scripts/bootstrap && scripts/with-postgres .venv/bin/python -m bench.assign $(BENCH_ARGS)

bench-detection:  ## Gate statistics: how fast each judge halts a doubled error rate (pure Python)
	scripts/bootstrap && .venv/bin/python -m bench.detection $(BENCH_ARGS)

soak:  ## Soak: the simulator's mixed traffic for 2 minutes against gunicorn, worker and beat
	scripts/bootstrap && .venv/bin/python -m bench.soak $(SOAK_ARGS)

migrate:
	scripts/bootstrap && .venv/bin/python manage.py migrate

shell:
	scripts/bootstrap && .venv/bin/python manage.py shell
