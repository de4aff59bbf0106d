package projections

// ProjectorSettings exposes the projector transaction's settings to tests.
const ProjectorSettings = projectorSettings
