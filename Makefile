# The two commands: `make dev` runs the service locally, `make test` runs every check CI runs.
.PHONY: dev test bench cost build deploy migrate lint fmt services-stop clean

dev:
	@scripts/dev.sh

test:
	@scripts/test.sh

bench:
	@scripts/bench.sh

# What 1,000 conversations cost (Lambda, API Gateway, Claude, Redis) from measured
# figures, and whether 128 MB is enough; prices and assumptions: scripts/cost/prices.toml.
cost:
	@scripts/cost.sh

# `sam build`: both functions for arm64 through cargo-lambda (zig from the project venv).
build:
	@scripts/sam.sh build

# Not run in CI: needs AWS credentials. First time: `make deploy ARGS=--guided`.
deploy: build
	@scripts/sam.sh deploy $(ARGS)

# Applies migrations/ to DATABASE_URL, or to the database named under SSM_PARAMETER_PREFIX.
migrate:
	@cargo run --quiet --release -p support-chat --bin migrate

lint:
	@cargo fmt --all -- --check
	@cargo clippy --all-targets -- -D warnings
	@scripts/check-template.sh
	@scripts/shape.sh

fmt:
	@cargo fmt --all

services-stop:
	@scripts/tls-services.sh stop; scripts/moto.sh stop; scripts/services.sh stop; scripts/docker.sh stop

clean: services-stop
	@cargo clean
	@rm -rf .aws-sam .local
