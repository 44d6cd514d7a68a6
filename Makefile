# The verbs a newcomer needs. Every target bootstraps .venv by itself.
.PHONY: run test lint format bench bench-detection bench-fixtures bench-fleet bench-beat bench-gates bench-dashboard soak migrate shell

run:  ## Prism, a worker with the beat, and the demo fleet's simulator (SIM=0: no simulator)
	scripts/run $(if $(filter 0 false no off,$(SIM)),--no-sim)

test:  ## Run the whole test suite (PostgreSQL: $$DATABASE_URL or a throwaway cluster)
	scripts/test

lint:  ## Ruff lint and format check
	scripts/bootstrap && .venv/bin/ruff check . && .venv/bin/ruff format --check .

format:
	scripts/bootstrap && .venv/bin/ruff format . && .venv/bin/ruff check --fix .

bench:  ## Benchmarks (see bench/README.md); BENCH_ARGS="--sessions 0,1e7" also on 10M-row tables
	scripts/bootstrap && scripts/with-postgres .venv/bin/python -m bench.assign $(BENCH_ARGS)

bench-fixtures:  ## Build (or list) the cached scale fixtures: BENCH_ARGS="--sessions 1e6,1e7"
	scripts/bootstrap && .venv/bin/python -m bench.fixtures $(BENCH_ARGS)

bench-fleet:  ## GET /fleet/ of a 20-version agent at 1M and 10M sessions
	scripts/bootstrap && .venv/bin/python -m bench.fleet $(BENCH_ARGS)

bench-beat:  ## One full beat tick on a real worker and Redis at 0.5M and 5M sessions
	scripts/bootstrap && .venv/bin/python -m bench.beat $(BENCH_ARGS)

bench-gates:  ## One rollout's gate evaluation at 1M and 10M sessions
	scripts/bootstrap && .venv/bin/python -m bench.gates $(BENCH_ARGS)

bench-dashboard:  ## The fleet board's live partial as a viewer at 1M and 10M sessions
	scripts/bootstrap && .venv/bin/python -m bench.dashboard $(BENCH_ARGS)

bench-detection:  ## Gate statistics: how fast each judge halts a doubled error rate (pure Python)
	scripts/bootstrap && .venv/bin/python -m bench.detection $(BENCH_ARGS)

soak:  ## Soak: the simulator's mixed traffic for 2 minutes against gunicorn, worker and beat
	scripts/bootstrap && .venv/bin/python -m bench.soak $(SOAK_ARGS)

migrate:
	scripts/bootstrap && .venv/bin/python manage.py migrate

shell:
	scripts/bootstrap && .venv/bin/python manage.py shell
