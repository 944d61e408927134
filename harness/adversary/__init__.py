"""The adversarial tenant as a fuzzer: request values drawn from the target's own OpenAPI schema
(`schema`, `values`), the cases and groups one run sends within a request-count budget (`cases`,
`pairwise`, `confusion`), and what they covered (`coverage`). The driver fires them
(`harness.driver.adversary`); the checks judge the history they leave."""
