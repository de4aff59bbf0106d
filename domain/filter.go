package domain

import (
	"reflect"
	"strings"
)

// FilterRule is one condition of a connection's filter: rules are AND-ed, and
// an empty list matches everything.
type FilterRule struct {
	Field string `json:"field"`
	Op    string `json:"op"`
	Value any    `json:"value"`
}

var filterOps = map[string]bool{"eq": true, "neq": true, "contains": true, "gt": true, "gte": true, "lt": true, "lte": true, "exists": true, "in": true}

// ValidateFilterRules returns an EInvalid error naming the first bad rule.
func ValidateFilterRules(rules []FilterRule) error {
	if len(rules) > 50 {
		return Errorf(EInvalid, "Invalid body: 'filter_rules' holds more than 50 rules")
	}
	for i, r := range rules {
		switch {
		case !filterOps[r.Op]:
			return Errorf(EInvalid, "Invalid body: 'filter_rules[%d].op' must be one of eq, neq, contains, gt, gte, lt, lte, exists, in", i)
		case !validFilterField(r.Field):
			return Errorf(EInvalid, "Invalid body: 'filter_rules[%d].field' must be payload.<path>, headers.<name>, method, content_type or source_ip", i)
		}
		switch r.Op {
		case "in":
			if _, ok := r.Value.([]any); !ok {
				return Errorf(EInvalid, "Invalid body: 'filter_rules[%d].value' must be an array for op in", i)
			}
		case "exists":
			if _, ok := r.Value.(bool); !ok {
				return Errorf(EInvalid, "Invalid body: 'filter_rules[%d].value' must be a boolean for op exists", i)
			}
		case "gt", "gte", "lt", "lte":
			if _, ok := r.Value.(float64); !ok {
				return Errorf(EInvalid, "Invalid body: 'filter_rules[%d].value' must be a number for op %s", i, r.Op)
			}
		case "contains":
			if _, ok := r.Value.(string); !ok {
				return Errorf(EInvalid, "Invalid body: 'filter_rules[%d].value' must be a string for op contains", i)
			}
		}
	}
	return nil
}

func validFilterField(f string) bool {
	switch {
	case f == "method", f == "content_type", f == "source_ip":
		return true
	case strings.HasPrefix(f, "payload.") && len(f) > len("payload."):
		return true
	case strings.HasPrefix(f, "headers.") && len(f) > len("headers."):
		return true
	}
	return f == "payload"
}

// FilterInput is what filters see of an ingested event. Headers keys are lowercase.
type FilterInput struct {
	Payload     any // the body parsed as JSON, nil when it is not JSON
	Headers     map[string]string
	Method      string
	ContentType string
	SourceIP    string
}

// MatchFilter reports whether every rule holds for in.
func MatchFilter(rules []FilterRule, in FilterInput) bool {
	for _, r := range rules {
		v, present := resolve(r.Field, in)
		if !evalRule(r, v, present) {
			return false
		}
	}
	return true
}

func resolve(field string, in FilterInput) (any, bool) {
	switch {
	case field == "method":
		return in.Method, true
	case field == "content_type":
		return in.ContentType, in.ContentType != ""
	case field == "source_ip":
		return in.SourceIP, in.SourceIP != ""
	case strings.HasPrefix(field, "headers."):
		v, ok := in.Headers[strings.ToLower(strings.TrimPrefix(field, "headers."))]
		return v, ok
	case field == "payload":
		return in.Payload, in.Payload != nil
	}
	cur := in.Payload
	for _, part := range strings.Split(strings.TrimPrefix(field, "payload."), ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

func evalRule(r FilterRule, v any, present bool) bool {
	switch r.Op {
	case "exists":
		want, _ := r.Value.(bool)
		return present == want
	case "eq":
		return present && jsonEqual(v, r.Value)
	case "neq":
		return !present || !jsonEqual(v, r.Value)
	case "contains":
		s, ok1 := v.(string)
		sub, ok2 := r.Value.(string)
		if ok1 && ok2 {
			return strings.Contains(s, sub)
		}
		if arr, ok := v.([]any); ok {
			for _, x := range arr {
				if jsonEqual(x, r.Value) {
					return true
				}
			}
		}
		return false
	case "in":
		arr, _ := r.Value.([]any)
		for _, x := range arr {
			if present && jsonEqual(v, x) {
				return true
			}
		}
		return false
	case "gt", "gte", "lt", "lte":
		a, ok1 := v.(float64)
		b, ok2 := r.Value.(float64)
		if !ok1 || !ok2 {
			return false // no coercion of strings
		}
		switch r.Op {
		case "gt":
			return a > b
		case "gte":
			return a >= b
		case "lt":
			return a < b
		}
		return a <= b
	}
	return false
}

func jsonEqual(a, b any) bool {
	return reflect.DeepEqual(a, b)
}
