"""A real authenticating gateway for the deployment tests: Debian's nginx with its JavaScript
module (`make gateway`), one key per tenant, each tenant's cache salt set in the request body."""
