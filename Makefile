# The verbs a newcomer needs. Every target bootstraps .venv by itself.
.PHONY: run test lint format bench bench-detection migrate shell

run:  ## Serve Prism with a demo login on http://127.0.0.1:8000 (SQLite, no servers)
	scripts/run

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

migrate:
	scripts/bootstrap && .venv/bin/python manage.py migrate

shell:
	scripts/bootstrap && .venv/bin/python manage.py shell
