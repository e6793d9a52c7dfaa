"""moonhowl's own GameStream client: what a Moonlight client does, for tests and tooling."""
