package eventstore

// PrepareAppend is prepare for tests: the statement an append runs and its arguments.
func (s *Store) PrepareAppend(appends ...StreamAppend) (string, []any, error) {
	q, args, _, err := s.prepare(appends)
	return q, args, err
}
