"""The chat page: a built front end (web/ in the repository) served from the package."""
